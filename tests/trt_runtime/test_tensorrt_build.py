"""Everything around building TensorRT engines that runs without TensorRT: profiles from the manifest, the
engine cache key, the version branch, the variant written (with the one TensorRT step, ``build_one``, given
as a function returning bytes), the refusal where TensorRT or a GPU is missing, and the CLI."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from leap_export import tensorrt_build as tb
from leap_export.errors import LeapError
from trt_runtime.backends.tensorrt import engine_mismatch, select_engines
from trt_runtime.errors import RuntimeInputError
from trt_runtime.manifest import load_manifest

ENV = tb.BuildEnvironment(
    trt_version="10.16.1.11", gpu="NVIDIA H100 80GB HBM3", compute_capability=(9, 0), polygraphy="0.53.6"
)


@pytest.fixture
def art(tiny_artifacts, tmp_path) -> Path:
    """A copy of the tiny BERT build with an ``fp16`` variant: a stand-in that names the fp32 graphs (the real
    one has FP16 graphs with the same I/O; the build only reads its files and I/O)."""
    folder = tmp_path / "art"
    shutil.copytree(tiny_artifacts["bert"], folder)
    manifest = load_manifest(folder)
    manifest.data["variants"]["fp16"] = {**manifest.variant("fp32"), "precision": "fp16"}
    manifest.save()
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- profiles ---------------------------------------------------------------------------------------------


def test_profile_defaults_come_from_the_manifest(art):
    manifest = load_manifest(art)
    dims = tb.profile_dims(manifest)
    assert manifest.max_seq_length == 64
    assert (dims.min_batch, dims.opt_batch, dims.max_batch) == (1, tb.DEFAULT_OPT_BATCH, tb.DEFAULT_MAX_BATCH)
    assert (dims.min_seq, dims.opt_seq, dims.max_seq) == (1, min(tb.DEFAULT_OPT_SEQ, 64), 64)
    small = tb.profile_dims(manifest, {"max_batch": 8, "max_seq": 16, "opt_batch": None})
    assert (small.opt_batch, small.max_batch, small.opt_seq, small.max_seq) == (8, 8, 16, 16)
    assert tb.profile_dims(manifest, small) == small
    assert small.record() == {
        "batch": {"min": 1, "opt": 8, "max": 8},
        "sequence": {"min": 1, "opt": 16, "max": 16},
    }


@pytest.mark.parametrize(
    "request_, message",
    [
        ({"max_seq": 65}, "exceeds the build's max_seq_length 64"),
        ({"opt_batch": 64, "max_batch": 32}, "opt_batch 64 exceeds max_batch 32"),
        ({"opt_seq": 40, "max_seq": 32}, "opt_seq 40 exceeds max_seq 32"),
        ({"max_batch": 0}, "max_batch must be an integer >= 1"),
        ({"max_batch": True}, "max_batch must be an integer >= 1"),
        ({"max_batches": 4}, "unknown profile setting max_batches"),
    ],
)
def test_profile_settings_are_checked(art, request_, message):
    with pytest.raises(LeapError, match=message):
        tb.profile_dims(load_manifest(art), request_)


def test_each_graph_gets_a_profile_from_its_inputs(art):
    manifest = load_manifest(art)
    dims = tb.profile_dims(manifest, {"opt_batch": 4, "max_batch": 16, "opt_seq": 24, "max_seq": 48})
    graphs = dict(tb.graph_profiles(manifest, manifest.variant_spec("fp16"), dims))
    assert list(graphs) == ["seg_00", "seg_01", "seg_02", "full"]
    batch_seq = ((1, 1), (4, 24), (16, 48))
    assert graphs["seg_00"] == {"input_ids": batch_seq, "attention_mask": batch_seq}
    assert graphs["full"] == graphs["seg_00"]
    assert graphs["seg_01"] == {
        "hidden_in": ((1, 1, 32), (4, 24, 32), (16, 48, 32)),  # [B, S, H]
        "mask_bias": ((1, 1, 1, 1), (4, 1, 1, 24), (16, 1, 1, 48)),  # [B, 1, 1, S]
        "pool_weights": ((1, 1, 1), (4, 1, 24), (16, 1, 48)),  # [B, 1, S]
        "ref_pooled": ((1, 32), (4, 32), (16, 32)),  # [B, H]
    }
    with pytest.raises(LeapError, match="dimension 'tokens'"):
        tb.input_profile([{"name": "x", "shape": ["batch", "tokens"]}], dims, 32)


# -- the engine cache key -----------------------------------------------------------------------------------

KEY = {
    "onnx_sha256": "ab" * 32,
    "trt_version": "10.16.1.11",
    "compute_capability": (9, 0),
    "precision": "fp16",
    "profile": {
        "input_ids": ((1, 1), (32, 64), (128, 256)),
        "attention_mask": ((1, 1), (32, 64), (128, 256)),
    },
    "hardware_compatibility_level": "NONE",
}


def test_cache_key_is_a_function_of_every_ingredient():
    key = tb.engine_cache_key(**KEY)
    assert key == tb.engine_cache_key(**KEY)
    assert key == tb.engine_cache_key(**{**KEY, "profile": dict(reversed(list(KEY["profile"].items())))})
    changed = {
        "onnx_sha256": "cd" * 32,
        "trt_version": "11.4.0.106",
        "compute_capability": (8, 9),
        "precision": "fp32",
        "profile": {**KEY["profile"], "attention_mask": ((1, 1), (32, 64), (64, 256))},
        "hardware_compatibility_level": "AMPERE_PLUS",
    }
    keys = {key}
    for name, value in changed.items():
        other = tb.engine_cache_key(**{**KEY, name: value})
        assert other not in keys, name
        keys.add(other)
    assert tb.engine_cache_key(**KEY, recipe="another recipe") not in keys


# -- the version branch -------------------------------------------------------------------------------------


def test_builder_steps_per_major_version():
    ten, eleven = tb.builder_steps("10.16.1.11"), tb.builder_steps("11.4.0.106")
    assert (ten.major, ten.strongly_typed_flag, ten.precision_flags) == (10, True, ())
    assert (eleven.major, eleven.strongly_typed_flag, eleven.precision_flags) == (11, False, ())
    assert set(ten.trt_names) - set(eleven.trt_names) == {"STRONGLY_TYPED"}
    for version in ("8.6.1", "9.3.0", "12.0.0"):
        with pytest.raises(LeapError, match=f"TensorRT {version} is not supported"):
            tb.builder_steps(version)


# -- writing the variant ------------------------------------------------------------------------------------


class Builder:
    """The one TensorRT step, as a function: returns bytes naming what it was asked to build."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls: list[tuple[Path, dict, Path]] = []
        self.fail_at = fail_at

    def __call__(self, onnx: Path, profile: dict, timing_cache: Path) -> bytes:
        self.calls.append((onnx, profile, timing_cache))
        if self.fail_at is not None and len(self.calls) > self.fail_at:
            raise LeapError(f"TensorRT could not build an engine from {onnx}")
        return f"engine of {onnx.name} {json.dumps(profile)}".encode()


def write(art: Path, tmp_path: Path, builder: Builder, *, env=ENV, force=False, source="fp16", **kw) -> str:
    manifest = load_manifest(art)
    return tb.write_engines(
        manifest,
        tb.source_variant_spec(manifest, source),
        env=env,
        steps=tb.builder_steps(env.trt_version),
        dims=tb.profile_dims(manifest, {"max_batch": 16}),
        build_one=builder,
        engine_cache=tmp_path / "engines",
        timing_cache=tb.default_timing_cache(art, env),
        force=force,
        progress=False,
        **kw,
    )


def test_engines_are_written_as_the_variant_of_this_gpu(art, tmp_path):
    builder = Builder()
    name = write(art, tmp_path, builder)
    assert name == "tensorrt-sm90"
    manifest = load_manifest(art, variant=name)  # every file hashed against the manifest
    spec = manifest.variant_spec(name)
    assert (spec.backend, spec.precision, spec.record["from_variant"]) == ("tensorrt", "fp16", "fp16")
    assert [e.file for e in spec.segments] == [f"{name}/seg_0{i}.engine" for i in range(3)]
    assert spec.full.file == f"{name}/full.engine"
    fp32_full = manifest.variant("fp32")["full"]
    assert spec.record["full"]["outputs"] == fp32_full["outputs"]
    assert spec.record["full"]["inputs"] == fp32_full["inputs"]
    assert (art / spec.full.file).read_bytes().startswith(b"engine of full.onnx")
    record = spec.record["tensorrt"]
    assert record["version"] == "10.16.1.11"
    assert (record["gpu"], record["compute_capability"]) == ("NVIDIA H100 80GB HBM3", "9.0")
    assert (record["hardware_compatibility_level"], record["version_compatible"]) == ("NONE", False)
    assert record["network_flags"] == ["STRONGLY_TYPED"] and record["builder_flags"] == []
    assert record["profile"]["batch"] == {"min": 1, "opt": 16, "max": 16}
    assert record["profile"]["sequence"] == {"min": 1, "opt": 64, "max": 64}
    assert record["timing_cache"] == "timing-cache/sm90-trt10.16.1.11.cache"
    assert list(record["cache_keys"]) == ["seg_00", "seg_01", "seg_02", "full"]
    assert manifest.default_variant == "fp32"  # engines never become the default: they run on one GPU type
    # every graph built once, from the fp16 variant's files, with its profile and the timing cache
    assert [c[0].name for c in builder.calls] == ["seg_00.onnx", "seg_01.onnx", "seg_02.onnx", "full.onnx"]
    assert {c[2] for c in builder.calls} == {art / "timing-cache" / "sm90-trt10.16.1.11.cache"}
    assert (art / "timing-cache").is_dir()
    assert {p.name for p in (tmp_path / "engines").iterdir()} == {
        f"{k}.engine" for k in record["cache_keys"].values()
    }
    assert not [p for p in art.iterdir() if p.name.startswith(".")]  # no temporary folder left
    # the runtime's side: this GPU picks it; the same TensorRT runs it; another one is refused
    assert select_engines(manifest, (9, 0)).name == name
    assert (
        engine_mismatch(spec.record, trt_version="10.16.1.11", compute_capability=(9, 0), root=art, name=name)
        is None
    )
    assert "--backend tensorrt --force" in engine_mismatch(
        spec.record, trt_version="11.4.0.106", compute_capability=(9, 0), root=art, name=name
    )


def test_existing_engines_need_force_and_cached_engines_are_copied(art, tmp_path):
    write(art, tmp_path, Builder())
    before = snapshot(art)
    with pytest.raises(
        LeapError, match="already has TensorRT engines for this GPU \\(tensorrt-sm90\\); pass --force"
    ):
        write(art, tmp_path, Builder())
    assert snapshot(art) == before
    again = Builder()
    write(art, tmp_path, again, force=True)
    assert again.calls == []  # every engine from the cache
    after = load_manifest(art, variant="tensorrt-sm90").variant("tensorrt-sm90")
    assert [e["sha256"] for e in after["segments"]] == [
        e["sha256"] for e in json.loads(before["manifest.json"])["variants"]["tensorrt-sm90"]["segments"]
    ]


def test_other_gpus_and_versions_get_their_own_variant_and_keys(art, tmp_path):
    write(art, tmp_path, Builder())
    ada = dataclasses.replace(ENV, gpu="NVIDIA L4", compute_capability=(8, 9), trt_version="11.4.0.106")
    builder = Builder()
    assert write(art, tmp_path, builder, env=ada) == "tensorrt-sm89"
    assert len(builder.calls) == 4  # nothing shared with the sm90 engines
    manifest = load_manifest(art)
    record = manifest.variant("tensorrt-sm89")["tensorrt"]
    assert record["network_flags"] == []  # 11.x: strongly typed without the (deprecated) flag
    assert select_engines(manifest, (8, 9)).name == "tensorrt-sm89"
    assert select_engines(manifest, (9, 0)).name == "tensorrt-sm90"
    with pytest.raises(RuntimeInputError) as e:
        select_engines(manifest, (8, 0))
    assert "tensorrt-sm90 (NVIDIA H100 80GB HBM3, compute capability 9.0)" in str(e.value)
    assert "tensorrt-sm89 (NVIDIA L4, compute capability 8.9)" in str(e.value)
    assert f"leap-export build {art} --out {art} --backend tensorrt`" in str(e.value)


def test_a_failed_build_writes_nothing(art, tmp_path):
    before = snapshot(art)
    with pytest.raises(LeapError, match="seg_01.onnx"):
        write(art, tmp_path, Builder(fail_at=1))
    after = snapshot(art)
    assert after == before  # no variant folder, no temporary folder, the manifest untouched
    assert not (art / "tensorrt-sm90").exists()


def test_hardware_compatible_engines_are_recorded_and_run_on_later_gpus(art, tmp_path):
    name = write(art, tmp_path, Builder(), hardware_compatibility_level="AMPERE_PLUS")
    manifest = load_manifest(art)
    assert manifest.variant(name)["tensorrt"]["hardware_compatibility_level"] == "AMPERE_PLUS"
    assert select_engines(manifest, (8, 6)).name == name
    record = manifest.variant(name)
    assert (
        engine_mismatch(record, trt_version=ENV.trt_version, compute_capability=(8, 6), root=art, name=name)
        is None
    )
    assert "8.0 and later" in engine_mismatch(
        record, trt_version=ENV.trt_version, compute_capability=(7, 5), root=art, name=name
    )


def test_source_variant_must_be_an_onnx_build(art, tiny_artifacts):
    manifest = load_manifest(tiny_artifacts["bert"])  # no fp16 variant
    with pytest.raises(LeapError) as e:
        tb.source_variant_spec(manifest, "fp16")
    root = tiny_artifacts["bert"]
    assert f"`leap-export build {root} --out {root} --precision fp16`" in str(e.value)
    with pytest.raises(LeapError, match="built from the fp16 or fp32 graphs, not 'int8'"):
        tb.source_variant_spec(manifest, "int8")
    assert tb.source_variant_spec(manifest, "fp32").name == "fp32"


# -- where TensorRT cannot run (here) --------------------------------------------------------------------


def test_build_engines_is_refused_before_any_work(art, tmp_path):
    before = snapshot(art)
    with pytest.raises(LeapError) as e:
        tb.build_engines(art, engine_cache=tmp_path / "engines", progress=False)
    message = str(e.value)
    assert "TensorRT engines cannot be built here" in message
    assert "TensorRT is not installed" in message and "GPU" in message
    assert "built on the GPU (type) that will run them" in message
    assert snapshot(art) == before and not (tmp_path / "engines").exists()
    with pytest.raises(LeapError, match="unknown profile setting"):  # arguments are checked first
        tb.build_engines(art, profiles={"batch": 4})


CLI = [sys.executable, "-m", "leap_export.cli"]


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_cli_build_backend_tensorrt_is_refused_here(art):
    before = snapshot(art)
    proc = cli("build", art, "--out", art, "--backend", "tensorrt", "--max-batch", "64")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Error: TensorRT engines cannot be built here" in proc.stderr
    assert "built on the GPU (type) that will run them" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert snapshot(art) == before


def test_cli_refuses_options_that_do_not_apply(art, tiny_bert):
    proc = cli("build", art, "--out", art, "--backend", "tensorrt", "--theta", "0.9", "--exits", "on")
    assert proc.returncode == 2 and "--theta, --exits would be ignored" in proc.stderr
    proc = cli("build", tiny_bert, "--out", art, "--max-batch", "8")
    assert proc.returncode == 2 and "--max-batch set the TensorRT engines' profile" in proc.stderr
    proc = cli("build", "minilm-l6", "--out", art, "--backend", "tensorrt")
    assert proc.returncode == 2 and "pass the build folder itself as MODEL" in proc.stderr
    assert "fp16" in cli("build", "--help").stdout


def test_a_build_without_fp16_graphs_gets_them_first(tiny_artifacts, tmp_path, monkeypatch):
    """``--backend tensorrt`` on a folder with only fp32 graphs converts them to the fp16 variant (a real
    conversion, seconds on the CPU) and builds the engines from it. TensorRT itself cannot run here: the
    environment and the one-engine build are stood in for; everything around them is the real code."""
    folder = tmp_path / "art"
    shutil.copytree(tiny_artifacts["bert"], folder)
    builder = Builder()
    monkeypatch.setattr(tb, "build_environment", lambda: ENV)
    monkeypatch.setattr(
        tb, "_polygraphy_build", lambda onnx, profile, cache, **_: builder(onnx, profile, cache)
    )
    tb.build_engines(folder, engine_cache=tmp_path / "engines", progress=False)
    manifest = load_manifest(folder)
    assert {"fp16", "tensorrt-sm90"} <= set(manifest.variants())
    assert manifest.variant_spec("fp16").precision == "fp16"
    assert [c[0] for c in builder.calls] == [
        folder / e.file for e in manifest.variant_spec("fp16").segments
    ] + [folder / manifest.variant_spec("fp16").full.file]
