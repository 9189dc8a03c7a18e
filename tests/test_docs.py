"""The documentation's command lines run against the code: every ``leap-export`` command, option and
option value, and every ``--flag`` of a ``python scripts/*.py`` line, in README, RESULTS, MANIFEST.

Paths in the docs are placeholders (``DIR``, ``artifacts/minilm-l6``), so each line is parsed with click's
resilient parsing (no path is looked up) and every option value whose type is not a path is then converted
on its own: an option that does not exist, a choice that is not offered (``--schedule blockz``), a number
that is not one, or a stray positional argument fails here.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "docs/RESULTS.md", "docs/MANIFEST.md"]
_CLI = re.compile(r"(?:^|\s|/)(?:leap-export|leap_export\.cli)\s+(?P<args>[a-z]\S*.*)$")
_PLACEHOLDER = re.compile(r"[A-Z][A-Z_]*")  # DIR, N, STOCK_ART: a value the reader fills in
_SCRIPT = re.compile(r"(?:^|\s)python\s+(?P<script>scripts/\w+\.py)(?P<args>.*)$")


def _snippets(text: str) -> list[str]:
    """Command lines in fenced blocks (backslash continuations joined, comments dropped) and inline code spans."""
    found = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        if "──" in block:  # the README's diagram
            continue
        found += [re.split(r"\s#\s", line)[0].strip() for line in block.replace("\\\n", " ").splitlines()]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    found += [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]
    return found


def _lines(pattern: re.Pattern) -> list[tuple[str, str, re.Match]]:
    out = []
    for doc in DOCS:
        for snippet in _snippets((ROOT / doc).read_text(encoding="utf-8")):
            m = pattern.search(snippet)
            if m:
                out.append((doc, snippet, m))
    return out


def _words(args: str) -> list[str]:
    # "..." stands for arguments given earlier; <(zcat x) is a shell process substitution: one path
    args = re.sub(r"<\([^)]*\)", "/dev/fd/63", args)
    return [w for w in shlex.split(args) if w not in ("...", "…")]


CLI_LINES = [(doc, snippet, _words(m["args"])) for doc, snippet, m in _lines(_CLI)]
SCRIPT_LINES = [(doc, snippet, m["script"], _words(m["args"])) for doc, snippet, m in _lines(_SCRIPT)]


def test_the_docs_show_every_command_and_script():
    """The extraction finds what it should: every command has an example, and the scripts are there."""
    from leap_export.cli import COMMANDS

    shown = {words[0] for _, _, words in CLI_LINES if words}
    assert shown == set(COMMANDS), f"commands with no example in the docs: {set(COMMANDS) - shown}"
    assert {script for _, _, script, _ in SCRIPT_LINES} >= {
        "scripts/overhead_spread.py",
        "scripts/host_loop_cost.py",
        "scripts/handoff_cost.py",
    }
    assert len(CLI_LINES) > 40


@pytest.mark.parametrize(
    "doc,snippet,words", CLI_LINES, ids=[f"{d}:{' '.join(w)[:60]}" for d, _, w in CLI_LINES]
)
def test_documented_command_line_parses(doc, snippet, words):
    from leap_export.cli import cli

    root = click.Context(cli)
    name, args = words[0], words[1:]
    command = cli.get_command(root, name)
    assert command is not None, f"{doc}: `{snippet}`: no command '{name}'"
    known = {o for p in command.params for o in p.opts + p.secondary_opts} | {"--help", "-h"}
    unknown = [w.split("=")[0] for w in args if w.startswith("-") and w.split("=")[0] not in known]
    assert not unknown, f"{doc}: `{snippet}`: {name} has no option {unknown}"
    try:
        ctx = command.make_context(name, list(args), parent=root, resilient_parsing=True)
    except click.UsageError as e:
        pytest.fail(f"{doc}: `{snippet}`: {e.format_message()}")
    assert not ctx.args, f"{doc}: `{snippet}`: arguments the command does not take: {ctx.args}"
    # the values resilient parsing let through unconverted: convert every one that is not a path
    opts, _, _ = command.make_parser(ctx).parse_args(list(args))
    for param in command.params:
        if (
            param.name in opts
            and not isinstance(param.type, click.Path | click.File)
            and not _PLACEHOLDER.fullmatch(str(opts[param.name]))
        ):
            try:
                param.type_cast_value(ctx, opts[param.name])
            except click.BadParameter as e:
                pytest.fail(f"{doc}: `{snippet}`: {param.opts[0]}: {e.format_message()}")


@pytest.mark.parametrize(
    "doc,snippet,script,words",
    SCRIPT_LINES,
    ids=[f"{d}:{s} {' '.join(w)[:50]}" for d, _, s, w in SCRIPT_LINES],
)
def test_documented_script_flags_exist(doc, snippet, script, words):
    assert (ROOT / script).is_file(), f"{doc}: `{snippet}`: no {script}"
    flags = {w.split("=")[0] for w in words if w.startswith("--")}
    helped = subprocess.run(
        [sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert helped.returncode == 0, helped.stderr
    missing = {f for f in flags if not re.search(rf"{re.escape(f)}\b", helped.stdout)}
    assert not missing, f"{doc}: `{snippet}`: {script} has no {sorted(missing)}"


def test_readme_python_api_block_runs(tiny_artifacts, tmp_path, sentences):
    """The README's "Python API" block, as written, on a tiny build with an int8 variant (its own process:
    the block's ``shared_pool=False`` encoder meets the shared pool its first encoder made)."""
    import shutil

    from leap_export.export import build

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Python API", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, flags=re.S)[1]
    art = tmp_path / "art"
    shutil.copytree(tiny_artifacts["bert"], art)
    build(art, art, precision="int8", progress=False)
    assert block.count('"artifacts/minilm-l6"') >= 5
    program = "\n".join(
        [
            "import json",
            f"sentences = {sentences!r}",
            "class Bar:",
            "    n = 0",
            "    def update(self, k): self.n += k",
            "bar = Bar()",
            block.replace('"artifacts/minilm-l6"', repr(str(art))),
            "assert emb.shape == (2, encoder.manifest.hidden_size), emb.shape",
            "assert result.embeddings.shape[0] == len(sentences) == len(result.exit_layers)",
            "assert bar.n == len(sentences), bar.n",
            "print(json.dumps(encoder.stats.as_dict()))",
        ]
    )
    run = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    stats = json.loads(run.stdout.strip().splitlines()[-1])
    assert stats["samples"] == 2 + 2 * len(sentences)  # encode, then encode_with_exits twice
