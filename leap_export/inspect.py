"""A readable summary of an artifact folder (rich tables)."""

from __future__ import annotations

import json
import os


def summary(artifacts: str | os.PathLike, *, as_json: bool = False, check_files: bool = True) -> None:
    """Print the manifest (a table, or ``as_json``); with ``check_files`` hash every variant's files, and
    after printing raise :class:`ArtifactError` naming each broken one."""
    from trt_runtime.errors import ArtifactError
    from trt_runtime.manifest import load_manifest

    m = load_manifest(artifacts, check_files=False)  # a broken file is reported below, after the summary
    problems = {name: m.file_problems(name) for name in m.variants()} if check_files else {}
    from leap_export.commands._options import console as make_console

    console = make_console()
    if as_json:
        console.print_json(json.dumps(m.data))
    else:
        _print_summary(console, m, problems, check_files)
    broken = {name: p for name, p in problems.items() if p}
    if broken:
        raise ArtifactError(
            f"artifact folder {m.root} is not intact: "
            + "; ".join(
                f"{name}: {', '.join(p)} (rebuild: {m.rebuild_hint(name, p)})" for name, p in broken.items()
            )
        )


def _print_summary(console, m, problems: dict[str, list[str]], check_files: bool) -> None:
    from rich.markup import escape
    from rich.table import Table

    d = m.data
    policy = d["exit_policy"]
    source = d.get("source") or {}  # the runtime does not need it: a hand-written manifest may lack it
    sha = source.get("weights_sha256")
    console.print(f"[bold]{m.root}[/bold]  (schema v{d['schema_version']}, created {d.get('created', '?')})")
    console.print(
        f"source [cyan]{source.get('name', 'unknown')}[/cyan] ({d['architecture']}, {d['num_layers']} layers, hidden "
        f"{d['hidden_size']}, max_seq {d['max_seq_length']}, {d['pooling']} pooling"
        f"{' + normalize' if d['normalize'] else ''}), weights sha256 {sha[:12] + '…' if sha else 'unknown'}"
    )
    console.print(
        f"exit policy: theta {policy['theta']}, patience k {policy['patience']}, min_layer {policy['min_layer']}"
        f"{'' if policy.get('enabled', True) else ' ([bold]exits off[/bold]: full depth unless asked for)'}; "
        f"history: {_entries(len(d.get('policy_history', [])))}"
    )
    check = m.exit_check
    if check is not None:
        state = "[green]passed[/green]" if check["passed"] else "[bold red]FAILED[/bold red]"
        console.print(f"exit check: {state}. {escape(check.get('reason', ''))}")
    table = Table(title="segments")
    for col in ("#", "layers", "inputs", "outputs", "ref", *m.variants()):
        table.add_column(col)
    variants = {name: m.variant(name)["segments"] for name in m.variants()}
    for seg in m.segments:
        files = [
            f"{variants[v][seg.index]['file']} ({_size(m.root / variants[v][seg.index]['file'])})"
            for v in variants
        ]
        table.add_row(
            str(seg.index),
            f"{seg.start + 1}–{seg.end}",
            ", ".join(seg.inputs),
            ", ".join(seg.outputs),
            "-" if seg.ref_from is None else f"seg {seg.ref_from}",
            *files,
        )
    console.print(table)
    for name in m.variants():
        v = m.variant(name)
        if not check_files:
            state = "files not hashed"
        elif problems[name]:
            state = "[bold red]files NOT INTACT[/bold red]"
        else:
            state = "files verified"
        console.print(
            f"variant [bold]{name}[/bold]: backend {v.get('backend')}, precision {v.get('precision')}, "
            f"full graph {v['full']['file']} ({_size(m.root / v['full']['file'])}); {state}"
        )
    console.print(
        f"tokenizer {d['tokenizer']['file']} (pad id {d['tokenizer']['pad_id']}, "
        f"max length {d['tokenizer']['max_length']})"
    )
    console.print("tools: " + ", ".join(f"{k} {v}" for k, v in d.get("tools", {}).items()))


def _size(path) -> str:
    try:
        n = os.path.getsize(path)
    except OSError:
        return "missing"
    return f"{n / 1e6:.1f} MB"


def _entries(n: int) -> str:
    return f"{n} {'entry' if n == 1 else 'entries'}"
