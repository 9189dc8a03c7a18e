"""The documentation runs against the code.

- Every ``leap-export`` command line in README.md, docs/*.md and benchmarks/README.md parses against the
  CLI: each command, option, choice and number, and no stray arguments. Paths in the docs are
  placeholders (``ART``, ``heldout.txt``), so each line is parsed with click's resilient parsing (no path
  is looked up) and every option value whose type is not a path is then converted on its own.
- Every ``--flag`` of a documented ``python benchmarks/*.py`` (or ``scripts/*.py``) line is in that
  script's ``--help``.
- The README is short, and its first command on the user's own file comes within its first screen.
- The README's code runs exactly as written. The rule: after the set-up (``make demo`` / ``make test``,
  which the test suite itself stands for), every ```bash block under a "Quick start" heading runs in
  order with ``bash -euo pipefail`` in one empty folder, then every ```python block of the README runs in
  that same folder, both with this environment's ``bin`` first on ``PATH`` and ``HF_HUB_OFFLINE=1``.
  Nothing is substituted. Every other ```bash block must be set-up (``make`` commands only), and other
  fences are ```text (the workflow picture), so no README code goes unrun.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [
    "README.md",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")),
    "benchmarks/README.md",
]
_CLI = re.compile(r"(?:^|\s|/)(?:leap-export|leap_export\.cli)\s+(?P<args>[a-z]\S*.*)$")
_PLACEHOLDER = re.compile(r"[A-Z][A-Z_]*")  # ART, N, STOCK_ART: a value the reader fills in
_SCRIPT = re.compile(r"(?:^|\s)python\s+(?P<script>(?:benchmarks|scripts)/\w+\.py)(?P<args>.*)$")
_FENCE = re.compile(r"^```(?P<lang>[a-z]*)\n(?P<body>.*?)^```", flags=re.S | re.M)


def _snippets(text: str) -> list[str]:
    """Command lines in fenced blocks (backslash continuations joined, comments dropped) and inline code spans."""
    found = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        if "──" in block:  # a diagram
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
    """The extraction finds what it should: every command has an example, and the benchmark is there."""
    from leap_export.cli import COMMANDS

    shown = {words[0] for _, _, words in CLI_LINES if words}
    assert shown == set(COMMANDS), f"commands with no example in the docs: {set(COMMANDS) - shown}"
    assert {script for _, _, script, _ in SCRIPT_LINES} >= {"benchmarks/overhead_spread.py"}
    assert len(CLI_LINES) > 40
    for doc in DOCS:
        assert (ROOT / doc).is_file(), doc


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


# -- the README ------------------------------------------------------------------------------------


def _sections(text: str) -> list[tuple[str, str]]:
    """``(heading, body)`` for each ``## `` section (the text before the first: heading ``""``)."""
    parts = re.split(r"^## (.*)$", text, flags=re.M)
    return [("", parts[0])] + list(zip(parts[1::2], parts[2::2], strict=True))


def _readme_programs() -> tuple[list[str], list[str]]:
    """(the quick start's bash blocks, the README's python blocks), each exactly as written."""
    bash, python = [], []
    for heading, body in _sections(README.read_text(encoding="utf-8")):
        for m in _FENCE.finditer(body):
            lang, block = m["lang"], m["body"]
            if lang == "python":
                python.append(block)
            elif lang == "bash" and heading.lower().startswith("quick start"):
                bash.append(block)
            elif lang == "bash":  # only the set-up may go unrun: the test suite stands for it
                commands = [line for line in block.splitlines() if line.strip()]
                assert all(line.startswith("make ") for line in commands), (
                    f"README section '{heading}': a bash block that is neither set-up (make ...) nor under "
                    f"a 'Quick start' heading would go untested:\n{block}"
                )
            else:
                assert lang == "text", f"README section '{heading}': a ```{lang} block the tests do not run"
    return bash, python


def test_readme_is_short_and_starts_with_your_own_file():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 220, f"README is {len(lines)} lines"
    encode = [i for i, line in enumerate(lines, 1) if re.match(r"leap-export encode \S+ --input \S+", line)]
    assert encode and encode[0] <= 60, f"the first encode of the user's own file is at line {encode[:1]}"
    # the file it reads is one the quick start writes first (cat > F, printf ... > F)
    user_file = re.search(r"--input (\S+)", lines[encode[0] - 1])[1]
    written = [i for i, line in enumerate(lines, 1) if re.search(rf">\s*{re.escape(user_file)}(\s|$)", line)]
    assert written and written[0] < encode[0], f"the quick start never writes {user_file} before encoding it"
    bash, python = _readme_programs()
    assert bash and python, "the README has no quick start or no Python block"


@pytest.mark.slow
def test_readme_runs_as_written(tmp_path):
    """The quick start's bash blocks, then the Python blocks, verbatim, in one empty folder: about a minute
    (it builds and verifies the packaged all-MiniLM-L6-v2)."""
    import numpy as np

    bash, python = _readme_programs()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
    }
    for number, block in enumerate(bash, 1):
        run = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert run.returncode == 0, (
            f"README quick start, bash block {number} exited {run.returncode}:\n{block}\n"
            f"--- stdout\n{run.stdout[-3000:]}\n--- stderr\n{run.stderr[-3000:]}"
        )
    # what the quick start says it wrote: one embedding per line of the user's file
    script = "\n".join(bash)
    for source, output in re.findall(r"--input (\S+) --output (\S+\.npy)", script):
        rows = (tmp_path / source).read_text(encoding="utf-8").splitlines()
        assert np.load(tmp_path / output).shape[0] == len(rows), (source, output)
    for number, block in enumerate(python, 1):
        run = subprocess.run(
            [sys.executable, "-c", block],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, (
            f"README Python block {number} exited {run.returncode}:\n{block}\n"
            f"--- stdout\n{run.stdout[-3000:]}\n--- stderr\n{run.stderr[-3000:]}"
        )


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def test_docs_link_only_inside_the_repository():
    """Every relative link resolves to a file or folder of the repository (and its #anchor to a heading),
    and no doc cites a file that is not in it."""
    problems = []
    repo_docs = {p.name for p in ROOT.rglob("*.md") if ".venv" not in p.parts}
    for doc in [*DOCS, "CHANGELOG.md"]:
        path = ROOT / doc
        text = path.read_text(encoding="utf-8")
        # a markdown file named in the text must be one of the repository's; no path may climb out of it
        for name in sorted(set(re.findall(r"[\w.-]+\.md\b", text)) - repo_docs):
            problems.append(f"{doc}: cites {name}, which is not in the repository")
        for climb in re.findall(r"(?:\.\./)+[\w.-]+", text):
            if ROOT not in (path.parent / climb).resolve().parents:
                problems.append(f"{doc}: cites {climb}, outside the repository")
        for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"```.*?```", "", text, flags=re.S)):
            if re.match(r"[a-z]+:", target):  # http:, mailto:
                continue
            file, _, anchor = target.partition("#")
            resolved = (path.parent / file).resolve() if file else path
            if ROOT not in resolved.parents and resolved != ROOT:
                problems.append(f"{doc}: {target} points outside the repository")
            elif not resolved.exists():
                problems.append(f"{doc}: {target} does not exist")
            elif anchor and resolved.suffix == ".md":
                headings = re.findall(r"^#+ (.*)$", resolved.read_text(encoding="utf-8"), flags=re.M)
                if anchor not in {_anchor(h) for h in headings}:
                    problems.append(f"{doc}: {target}: no heading with that anchor")
    assert not problems, "\n".join(problems)
