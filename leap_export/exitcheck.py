"""May a build exit early by default? The exit-compatibility check that ``build`` runs.

A distilled model that was never trained to exit early (the stock all-MiniLM-L6-v2) "converges" falsely:
two consecutive layers agree while both are far from the final layer, so a sample exits with an
embedding far from the one the model would give it (the LEAP paper's false convergence). ``build``
therefore embeds a built-in probe set with the source model (PyTorch, every layer), applies the build's
own exit policy at its segment plan, and runs the paper's deployment checklist: the same
:func:`leap_export.diagnostics.diagnose` that ``leap-export diagnose`` prints, so the two never disagree
on the same model, policy and sentences.

``exits="auto"`` (the default): a model that fails ships with exits **off** in its manifest's default
policy, and the record says why. ``"on"`` / ``"off"`` set the default whatever the check says; the check
is still recorded. The runtime reads the record: exits turned on for a build that failed it (by the
build, or at run time with an explicit theta or ``exits=True``) log one warning per process that names
the failed checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from leap_export.diagnostics import DEFAULT_SENTENCES, diagnose, read_sentences
from leap_export.errors import LeapError
from trt_runtime.policy import ExitPolicy

EXITS_CHOICES = ("auto", "on", "off")
PROBE_SET = "leap_export/resources/diagnose_sentences.txt"  # diagnose's default set, shipped with the package


def probe_sentences() -> list[str]:
    """The built-in probe set: diagnose's default sentences, each once."""
    return list(dict.fromkeys(read_sentences(DEFAULT_SENTENCES)))


def check_exits(source, policy: ExitPolicy, boundaries: Sequence[int], *, model=None, tokenizer=None) -> dict:
    """The checklist on the probe set at ``policy`` with exits checked after ``boundaries``: the manifest's
    ``exit_check`` record (without the decision, which :func:`decide` adds)."""
    from leap_export.reference import layer_embeddings

    sentences = probe_sentences()
    num_layers = source.num_layers
    if not any(policy.may_exit_at(b) and b < num_layers for b in boundaries):
        # nothing can exit under the build's own policy (a min_layer past every check): nothing to measure,
        # and the default stays full depth; a lower min_layer at run time is a choice made knowingly
        return {
            "passed": False,
            "failed": [
                f"no exit is possible under the build's policy (min_layer {policy.min_layer}, patience "
                f"{policy.patience}, checks after layers {', '.join(str(b) for b in boundaries if b < num_layers)})"
            ],
            "probe_set": PROBE_SET,
            "sentences": len(sentences),
            "policy": {"theta": policy.theta, "patience": policy.patience, "min_layer": policy.min_layer},
            "boundaries": list(boundaries),
        }
    pooled = layer_embeddings(source, sentences, model=model, tokenizer=tokenizer)
    report = diagnose(
        pooled,
        policy.theta,
        policy.patience,
        policy.min_layer,
        boundaries=list(boundaries),
        sweep_thetas=(),
    )
    return record(report, list(boundaries))


def record(report: dict[str, Any], boundaries: list[int]) -> dict[str, Any]:
    """What the manifest keeps of a diagnose report: the verdict, each checklist item and what failed."""
    checks = report["checklist"]["checks"]
    failed = [_short(c, report["policy"]["theta"]) for c in checks if not c["passed"]]
    if not failed:  # the checklist passed but a §5.2 diagnostic fired: that fails too
        failed = [f"§5.2 diagnostic: {d['name']}" for d in report["diagnostics"] if d["fired"]]
    return {
        "passed": report["verdict"] == "exit-compatible",
        "failed": failed,
        "probe_set": PROBE_SET,
        "sentences": report["num_samples"],
        "policy": report["policy"],
        "boundaries": boundaries,
        "checklist": [{k: c[k] for k in ("name", "value", "threshold", "passed", "layer")} for c in checks],
        "exit_rate_before_final": report["exit"]["rate_before_final"],
        "expected_layers": report["exit"]["expected_layers"],
        "exited": {
            "mean_similarity_to_full": report["exited"]["mean_similarity_to_full"],
            "min_similarity_to_full": report["exited"]["min_similarity_to_full"],
            "nn_at_10": report["exited"]["nn_at_k"],
        },
    }


def _short(check: dict, theta: float) -> str:
    if check["name"] == "exit rate":
        return f"exit rate at theta {theta:g} {100 * check['value']:.1f}% <= {100 * check['threshold']:.0f}%"
    return f"{check['name']} at layer {check['layer']} {check['value']:.3f} < {check['threshold']:g}"


def decide(check: dict, exits: str) -> tuple[bool, dict]:
    """(exits on by default?, the record with the decision and its reason). ``exits``: auto, on or off."""
    if exits not in EXITS_CHOICES:
        raise LeapError(f"exits must be one of {', '.join(EXITS_CHOICES)}, got {exits!r}")
    failed = "; ".join(check["failed"])
    if "checklist" not in check and exits == "auto":
        return False, {**check, "decision": exits, "reason": f"exits off by default: {failed}"}
    if exits == "off":
        enabled, reason = False, "exits off by default: build --exits off"
    elif exits == "on":
        enabled = True
        reason = (
            "exits on by default: build --exits on"
            if check["passed"]
            else f"exits on by default (build --exits on) although the exit check failed: {failed}"
        )
    elif check["passed"]:
        enabled, reason = True, "exits on by default: the model passed the exit-compatibility check"
    else:
        enabled = False
        reason = (
            f"exits off by default: the model failed the exit-compatibility check on "
            f"{check['sentences']} built-in probe sentences ({failed}), so early exit could return "
            "embeddings far from full depth. Train it with LEAP (`leap-export train`), or turn exits on "
            "knowingly (an explicit theta, `encode --exits`, EarlyExitEncoder(..., exits=True))"
        )
    return enabled, {**check, "decision": exits, "reason": reason}
