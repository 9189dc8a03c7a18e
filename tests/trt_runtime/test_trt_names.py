"""Every TensorRT name our code uses exists in the newest TensorRT 10.x and 11.x (their real compiled bindings).

The code declares its names (``TRT_NAMES`` of the runtime backend and of the build, and per major version
the names ``builder_steps`` lets Polygraphy touch); an AST walk checks that the code uses no name it does not
declare and declares no name it does not use; the declared names are then looked up in the compiled module of
the newest ``tensorrt-cu12-bindings`` wheel of each major version, fetched from PyPI (cached). See
``tests/trt_runtime/trt_names.py`` for what this proves and what it cannot.
"""

from __future__ import annotations

import ast
import os
import tempfile
import urllib.error
from pathlib import Path

import pytest

import leap_export.tensorrt_build as build_module
import trt_runtime.backends.tensorrt as runtime_module
from tests.trt_runtime import trt_names as tn

MODULES = {
    "runtime": (Path(runtime_module.__file__), runtime_module.TRT_NAMES),
    "build": (Path(build_module.__file__), build_module.TRT_NAMES),
}
# removed in TensorRT 11 (deprecated since 10.12): what the code must never use, and what the check must catch
REMOVED_IN_11 = (
    "FP16",  # BuilderFlag.FP16 (DataType's half type is HALF, so no other enum hides it)
    "OBEY_PRECISION_CONSTRAINTS",
    "PREFER_PRECISION_CONSTRAINTS",
    "set_output_type",
    "precision",  # ILayer.precision
    "EXPLICIT_BATCH",
    "device_memory_size",  # ICudaEngine.device_memory_size -> device_memory_size_v2
)


def names_for(major: int) -> set[str]:
    """Every TensorRT name our code takes on TensorRT ``major``."""
    steps = build_module.builder_steps(f"{major}.0.0")
    return set(runtime_module.TRT_NAMES) | set(build_module.TRT_NAMES) | set(steps.trt_names)


def _unreachable(why: str) -> None:
    """Skip where PyPI cannot be reached, except in CI, where the check must run (CI reaches PyPI)."""
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def _wheel_cache(request) -> Path:
    """Where downloaded wheels are kept between runs: ``$LEAP_EXPORT_CACHE/wheels``, else pytest's cache, else
    the temporary folder (pytest's cache is absent under ``-p no:cacheprovider``)."""
    if os.environ.get("LEAP_EXPORT_CACHE"):
        return Path(os.environ["LEAP_EXPORT_CACHE"]) / "wheels"
    if getattr(request.config, "cache", None) is not None:
        return request.config.cache.mkdir("tensorrt-wheels")
    path = Path(tempfile.gettempdir()) / "leap-export-tensorrt-wheels"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="module")
def bindings(request) -> dict[int, tuple[str, tn.BindingNames]]:
    """The newest wheel of each major version: from PyPI (cached); skipped only if PyPI cannot be reached
    and no earlier run left wheels in the cache."""
    cache = _wheel_cache(request)
    try:
        releases = tn.pypi_releases()
    except (OSError, urllib.error.URLError) as e:
        cached = tn.cached_wheels(cache)
        if not {10, 11} <= set(cached):
            _unreachable(f"PyPI cannot be reached ({e}) and {cache} holds no TensorRT 10 and 11 wheels")
        return {major: (version, tn.BindingNames(path)) for major, (version, path) in cached.items()}
    versions = tn.latest_versions(releases)
    assert {10, 11} <= set(versions), f"PyPI lists no 10.x or 11.x {tn.PACKAGE}: {sorted(releases)}"
    out = {}
    for major in (10, 11):
        version = versions[major]
        wheel = tn.fetch_wheel(version, releases[version], cache)
        out[major] = (version, tn.BindingNames(wheel))
    print(f"TensorRT name check: {', '.join(f'{v} ({w.wheel.name})' for v, w in out.values())}")
    return out


# -- the code against its declarations (no network) -----------------------------------------------------------


@pytest.mark.parametrize("module", sorted(MODULES))
def test_code_uses_exactly_the_names_it_declares(module):
    path, declared = MODULES[module]
    used = tn.trt_attribute_uses(path.read_text())
    assert not tn.undeclared(path.read_text(), declared), "used on TensorRT but not in TRT_NAMES"
    assert not set(declared) - set(used), "declared in TRT_NAMES but never used (stale)"
    assert len(declared) == len(set(declared))


def test_the_walk_follows_tensorrt_objects_through_the_code():
    """The walk must see uses through locals, ``self`` attributes and constructor arguments, or a name used
    that way would escape the check."""
    used = tn.trt_attribute_uses(MODULES["runtime"][0].read_text())
    # engine: local of activate; context: self.context in _bind; runtime: passed into EngineRunner
    for name in ("get_tensor_name", "execute_async_v3", "set_input_shape", "deserialize_cuda_engine"):
        assert name in used
    assert {"TensorIOMode", "INPUT", "nptype"} <= set(used)  # through self.trt


def test_the_walk_catches_a_misspelt_name():
    source = MODULES["runtime"][0].read_text()
    assert "execute_async_v3(" in source
    broken = source.replace("execute_async_v3(", "execute_async_v2(")
    assert "execute_async_v2" in tn.undeclared(broken, runtime_module.TRT_NAMES)
    typo = "\n".join(
        [
            "import tensorrt as trt",
            "def build(path):",
            "    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))",
            "    config = builder.create_builder_config()",
            "    config.set_flag(trt.BuilderFlag.FP16)",
            "    helper(builder)",
            "def helper(b):",
            "    b.create_netwrok(0)",
            "    return getattr(trt.BuilderFlag, 'OBEY_PRECISION_CONSTRAINTS')",
        ]
    )
    uses = tn.trt_attribute_uses(typo)
    assert {"Builder", "create_builder_config", "set_flag", "BuilderFlag", "FP16"} <= set(uses)
    assert {"create_netwrok", "OBEY_PRECISION_CONSTRAINTS"} <= set(uses)  # through a call, and getattr


def test_polygraphy_is_never_asked_for_precision_flags():
    """``CreateConfig(fp16=True)`` and ``precision_constraints=`` raise on TensorRT 11: the graph's types decide."""
    tree = ast.parse(MODULES["build"][0].read_text())
    calls = {
        node.func.id: node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    forbidden = {"fp16", "bf16", "int8", "fp8", "tf32", "precision_constraints"}
    config = calls["CreateConfig"]
    assert not {kw.arg for kw in config.keywords} & forbidden
    assert any(isinstance(kw.value, ast.Name) for kw in config.keywords if kw.arg is None)  # **options
    network = calls["NetworkFromOnnxPath"]
    assert [kw.arg for kw in network.keywords] == ["strongly_typed"]
    for major in (10, 11):
        assert build_module.builder_steps(f"{major}.1").precision_flags == ()


# -- the declarations against TensorRT's bindings (PyPI) -----------------------------------------------------


def test_latest_versions_takes_the_newest_final_release_per_major():
    wheel = [{"filename": "x-cp311-none-manylinux_2_28_x86_64.whl", "yanked": False}]
    releases = {
        "10.9.0.34": wheel,
        "10.13.3.9": wheel,
        "10.13.3.9.post1": wheel,
        "10.14.0rc1": wheel,
        "10.15.0.1": [{"filename": "x-cp311-none-manylinux_2_28_x86_64.whl", "yanked": True}],
        "10.2.0": [],
        "11.0.0.114": wheel,
        "11.4.0.106": [{"filename": "x-cp311-none-win_amd64.whl", "yanked": False}],
        "9.3.0.post12.dev1": wheel,
    }
    assert tn.latest_versions(releases) == {10: "10.13.3.9.post1", 11: "11.4.0.106"}


@pytest.mark.parametrize("major", [10, 11])
def test_every_name_exists_in_the_newest_release(bindings, major):
    version, names = bindings[major]
    assert version.startswith(f"{major}.")
    absent = tn.missing(names_for(major), names)
    assert not absent, f"TensorRT {version} has no {', '.join(absent)}"
    # passes only as the tail of a longer string (weaker: see trt_names): known ones, so a new one is looked at
    weak = sorted(n for n in names_for(major) if not names.exact(n))
    assert set(weak) <= {"Builder", "Logger", "Runtime", "INPUT", "num_errors", "serialize"}, weak


def test_version_specific_names_are_checked_per_version(bindings):
    """STRONGLY_TYPED is taken on 10.x only (deprecated and ignored on 11.x); both have it today."""
    assert "STRONGLY_TYPED" in build_module.builder_steps("10.16.1.11").trt_names
    assert "STRONGLY_TYPED" not in build_module.builder_steps("11.4.0.106").trt_names
    assert "STRONGLY_TYPED" in bindings[10][1]


def test_removed_names_are_reported_on_11(bindings):
    """The check fails for a removed name: each exists in 10.x, none in 11.x, and our code uses none."""
    v10, names10 = bindings[10]
    v11, names11 = bindings[11]
    assert tn.missing(REMOVED_IN_11, names10) == [], v10
    assert tn.missing(REMOVED_IN_11, names11) == sorted(REMOVED_IN_11), v11
    assert not set(REMOVED_IN_11) & (names_for(10) | names_for(11))
    assert tn.missing(["execute_async_v2_typo", "set_input_shapes"], names11) == [
        "execute_async_v2_typo",
        "set_input_shapes",
    ]


def test_a_misspelt_declared_name_fails_on_both(bindings):
    declared = [*runtime_module.TRT_NAMES, "set_tensor_adress"]
    for major in (10, 11):
        assert tn.missing(declared, bindings[major][1]) == ["set_tensor_adress"]


def test_polygraphy_takes_the_keywords_we_pass(request):
    """Our calls of Polygraphy against the newest Polygraphy's sources (the ``gpu`` extra takes the newest):
    every keyword we pass is a parameter of the class (or of a base it forwards ``**kwargs`` to)."""
    cache = _wheel_cache(request)
    try:
        releases = tn.pypi_releases("polygraphy")
    except (OSError, urllib.error.URLError) as e:
        _unreachable(f"PyPI cannot be reached ({e})")
    version = tn.latest_release(releases)
    wheel = tn.fetch_wheel(version, releases[version], cache)
    calls = tn.polygraphy_calls(MODULES["build"][0].read_text())
    assert set(calls) == {"Profile", "CreateConfig", "NetworkFromOnnxPath", "EngineBytesFromNetwork"}
    for name, (module, keywords) in calls.items():
        params = tn.polygraphy_parameters(wheel, module)
        assert keywords <= params[name], (version, name, keywords - params[name])
    trt = tn.polygraphy_parameters(wheel, "polygraphy.backend.trt")
    assert {"profiles", "load_timing_cache"} <= calls["CreateConfig"][1]
    assert "hardware_compatibility_level" in trt["CreateConfig"]  # passed through **options
    assert {"min", "opt", "max"} <= trt["Profile.add"]  # shapes.add(name, min=, opt=, max=)
    assert "severity" in tn.polygraphy_parameters(wheel, "polygraphy.logger")["Logger.verbosity"]
    assert "PolygraphyException" in tn.polygraphy_parameters(wheel, "polygraphy.exception")
    bad = tn.polygraphy_calls(MODULES["build"][0].read_text().replace("strongly_typed=", "strong_typing="))
    module, keywords = bad["NetworkFromOnnxPath"]
    assert keywords - tn.polygraphy_parameters(wheel, module)["NetworkFromOnnxPath"] == {"strong_typing"}
    print(f"Polygraphy keyword check: polygraphy {version}")
