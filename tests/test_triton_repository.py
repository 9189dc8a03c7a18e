"""`leap-export triton`: the model repository it writes, without a server (tests/test_triton.py runs one)."""

import re
from dataclasses import replace

import pytest
from click.testing import CliRunner

from leap_export.cli import cli
from leap_export.triton.repository import MODEL_NAME, ServeOptions, config_pbtxt
from trt_runtime import load_manifest


def _run(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


def test_triton_writes_a_standalone_repository(tiny_artifacts, tmp_path):
    art, out = tiny_artifacts["bert"], tmp_path / "repo"
    result = _run(
        "triton", art, "--out", out, "--instances", 3, "--max-batch-size", 8, "--max-queue-delay-us", 500,
        "--shadow-rate", 0.25,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    model = out / MODEL_NAME
    config = (model / "config.pbtxt").read_text()
    assert "max_batch_size: 8" in config
    assert "max_queue_delay_microseconds: 500" in config
    assert "instance_group [ { kind: KIND_CPU count: 3 } ]" in config
    assert "// 3" in config  # the comment says how the CPUs are shared among the 3 instances
    assert '{ key: "shadow_rate" value: { string_value: "0.25" } }' in config
    assert (model / "1" / "model.py").is_file()
    assert (model / "1" / "trt_runtime" / "serving.py").is_file()
    # the copied artifacts are intact (every sha256 checked) and are the same build
    copy = load_manifest(model / "1" / "artifacts")
    assert copy.data == load_manifest(art).data
    again = _run("triton", art, "--out", out)
    assert again.exit_code != 0 and "pass --force to replace it" in str(again.exception)
    assert _run("triton", art, "--out", out, "--force").exit_code == 0


def test_config_io_derives_from_the_manifest(tiny_artifacts):
    manifest = load_manifest(tiny_artifacts["mpnet"])
    manifest = replace(manifest, data={**manifest.data, "hidden_size": 768})
    config = config_pbtxt(manifest, ServeOptions(backend="tensorrt"))
    assert '{ name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }' in config
    assert '{ name: "EMBEDDING" data_type: TYPE_FP32 dims: [ 768 ] }' in config
    assert '{ name: "EXIT_LAYER" data_type: TYPE_INT32 dims: [ 1 ] }' in config
    assert "kind: KIND_GPU" in config  # a GPU backend's instances are placed on GPUs
    assert re.search(r"4 layers, hidden 768; exits after layers 2, 3, theta 0\.95", config)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--instances", "0"], "must be >= 1, got 0"),
        (["--max-batch-size", "0"], "must be >= 1, got 0"),
        (["--max-queue-delay-us", "-1"], "must be >= 0, got -1"),
        (["--shadow-rate", "1.5"], "must be in [0, 1], got 1.5"),
        (["--variant", "int9"], "no 'int9' build in this artifact folder"),
        (["--backend", "cuda"], "'cuda' is not one of"),
    ],
)
def test_bad_options_are_one_line_errors(tiny_artifacts, tmp_path, args, message):
    result = _run("triton", tiny_artifacts["bert"], "--out", tmp_path / "r", *args)
    assert result.exit_code != 0
    text = result.output + str(result.exception or "")
    assert message in text, text


def test_serve_refuses_the_layout_its_server_cannot_load(tiny_artifacts):
    result = _run("serve", tiny_artifacts["bert"], "--layout", "bls")
    assert result.exit_code != 0 and "use --layout bls-python here" in str(result.exception)


def test_bls_layout_writes_one_model_per_segment(tiny_artifacts, tmp_path):
    art = tiny_artifacts["bert"]
    assert _run("triton", art, "--out", tmp_path / "r", "--layout", "bls-python").exit_code == 0
    segments = load_manifest(art).segments
    for seg in segments:
        model = tmp_path / "r" / f"leap_segment_{seg.index}"
        assert (model / "1" / "model.onnx").is_file() and (model / "1" / "model.py").is_file()
        assert 'backend: "python"' in (model / "config.pbtxt").read_text()
    config = (tmp_path / "r" / MODEL_NAME / "config.pbtxt").read_text()
    names = ",".join(f"leap_segment_{s.index}" for s in segments)
    assert f'{{ key: "segment_models" value: {{ string_value: "{names}" }} }}' in config
    # the orchestrator keeps the manifest and the tokenizer; the graphs are the segment models'
    assert not list((tmp_path / "r" / MODEL_NAME / "1" / "artifacts").glob("*.onnx"))


def test_a_named_variant_ships_only_its_own_files(tiny_artifacts, tmp_path):
    out = tmp_path / "r"
    assert _run("triton", tiny_artifacts["bert"], "--out", out, "--variant", "fp32").exit_code == 0
    copy = out / MODEL_NAME / "1" / "artifacts"
    manifest = load_manifest(copy, check_files=False)
    manifest.check_files("fp32")  # every file the served variant needs is there, with its sha256
    shipped = {p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()}
    spec = manifest.variant_spec("fp32")
    assert shipped == {
        "manifest.json",
        manifest.tokenizer.file,
        spec.full.file,
        *(f.file for f in spec.segments),
    }


def test_a_repository_is_never_left_half_written(tiny_artifacts, tmp_path, monkeypatch):
    """A missing parent folder is refused (nothing created); a write that fails part-way leaves the model
    that was there, and the repository's other models, as they were."""
    import leap_export.triton.repository as repo_module
    from leap_export.errors import LeapError
    from leap_export.triton.repository import write_repository

    art = tiny_artifacts["bert"]
    with pytest.raises(LeapError, match="no/such"):
        write_repository(art, tmp_path / "no" / "such" / "repo")
    assert not (tmp_path / "no").exists()
    out = tmp_path / "repo"
    (out / "other_model").mkdir(parents=True)
    write_repository(art, out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))

    def broken(dest):
        (dest / "partial").mkdir(parents=True)
        raise OSError("disk full")

    monkeypatch.setattr(repo_module, "_copy_runtime", broken)
    with pytest.raises(OSError, match="disk full"):
        write_repository(art, out, force=True)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # no temporary folder left either
