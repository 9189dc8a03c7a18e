import pytest

from leap_export.errors import LeapError
from leap_export.export import plan_segments
from trt_runtime.policy import ExitPolicy


def _geometry(plans):
    return [(p.start, p.end, p.ref_layer, p.ref_from, p.ref_output, p.extra_layers) for p in plans]


def test_default_plan_is_lmin_then_one_segment_per_layer():
    plans = plan_segments(12, ExitPolicy(min_layer=6))
    assert [(p.start, p.end) for p in plans] == [(0, 6), (6, 7), (7, 8), (8, 9), (9, 10), (10, 11), (11, 12)]
    # k=1: the reference is each segment's input, i.e. the previous segment's pooled output
    assert [(p.ref_from, p.ref_output) for p in plans] == [(None, None)] + [(i, "pooled") for i in range(6)]


def test_explicit_boundaries_and_final_layer_appended():
    plans = plan_segments(6, ExitPolicy(min_layer=3), [3, 5])
    assert [(p.start, p.end) for p in plans] == [(0, 3), (3, 5), (5, 6)]


def test_patience_two_takes_reference_from_an_earlier_segment():
    plans = plan_segments(6, ExitPolicy(min_layer=3, patience=2))
    # after layer 3 the reference (layer 1) is inside segment 0; after 4 it is layer 2, also inside
    # segment 0, which therefore outputs pooled_l2; after 5 it is layer 3 = segment 0's own output.
    assert _geometry(plans) == [
        (0, 3, 1, None, None, (2,)),
        (3, 4, 2, 0, "pooled_l2", ()),
        (4, 5, 3, 0, "pooled", ()),
        (5, 6, 5, 2, "pooled", ()),  # no exit after the last layer: its score is informational
    ]


def test_segments_that_cannot_exit_need_no_reference():
    plans = plan_segments(6, ExitPolicy(min_layer=4, patience=3), [1, 2, 4, 5, 6])
    assert _geometry(plans)[:2] == [(0, 1, 0, None, None, ()), (1, 2, 1, 0, "pooled", ())]
    assert _geometry(plans)[2] == (2, 4, 1, 0, "pooled", ())


@pytest.mark.parametrize("bad", [[0, 3], [7], []])
def test_boundaries_out_of_range(bad):
    with pytest.raises(LeapError):
        plan_segments(6, ExitPolicy(min_layer=3), bad)


def test_a_boundary_given_twice_is_refused():
    """``--boundaries 4,4`` was silently read as ``4``."""
    with pytest.raises(LeapError, match=r"name layer 4 more than once"):
        plan_segments(6, ExitPolicy(min_layer=3), [4, 4])
    with pytest.raises(LeapError, match=r"name layers 3, 5 more than once"):
        plan_segments(6, ExitPolicy(min_layer=3), [5, 3, 5, 3])


def test_min_layer_beyond_the_depth_is_refused_with_explicit_boundaries_too():
    """The runtime refuses a manifest whose min_layer exceeds the depth, so the build must refuse it first."""
    with pytest.raises(LeapError, match="min_layer 9 exceeds the model's 6 layers"):
        plan_segments(6, ExitPolicy(min_layer=9), [2, 3])


def test_a_training_output_defaults_to_the_min_layer_it_was_trained_for(tiny_bert, tmp_path):
    """build and diagnose on a `leap-export train` output take its leap_config.json exit policy (the
    exit loss was weighted from that min_layer); they took L // 2 whatever the run used."""
    import json
    import shutil

    from leap_export.export import build
    from leap_export.sources import resolve_model

    assert resolve_model(tiny_bert).default_policy()["min_layer"] == 2  # 4 layers: L // 2
    run = tmp_path / "run"
    shutil.copytree(tiny_bert, run)
    (run / "leap_config.json").write_text(
        json.dumps({"exit_policy": {"theta": 0.95, "patience": 1, "min_layer": 3}})
    )
    assert resolve_model(run).default_policy()["min_layer"] == 3
    art = build(run, tmp_path / "art", progress=False)
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["exit_policy"]["min_layer"] == 3 and [s["layers"] for s in manifest["segments"]] == [
        [0, 3],
        [3, 4],
    ]
    assert (
        json.loads((build(run, tmp_path / "two", min_layer=2, progress=False) / "manifest.json").read_text())[
            "exit_policy"
        ]["min_layer"]
        == 2
    )  # an explicit --min-layer still wins


def test_a_segment_the_build_policy_cannot_exit_from_still_scores_the_rule_where_it_can():
    # min_layer 5: no exit after layer 3 or 5 under the build's policy, yet layers 2 and 4 are computed
    # inside those segments: their scores are the rule's cos(p_b, p_{b-1}), which a lower min_layer at run
    # time acts on without a rebuild. Only where b - k lies before the segment does the score fall back to
    # its own input (the last segment: a layer it would need from elsewhere, for an informational score)
    plans = plan_segments(6, ExitPolicy(min_layer=5), [3, 5])
    assert _geometry(plans) == [
        (0, 3, 2, None, None, ()),
        (3, 5, 4, None, None, ()),
        (5, 6, 5, 1, "pooled", ()),
    ]
