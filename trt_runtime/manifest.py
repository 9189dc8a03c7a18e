"""The manifest: the versioned contract between the build half, the runtime, Triton and C++ consumers.

``manifest.json`` in an artifact folder (schema documented in docs/MANIFEST.md):

- ``schema_version``, ``format`` ("leap-export"), ``created``, ``tools`` (versions)
- ``source``: spec, path, name, weights_sha256
- ``architecture``, ``num_layers``, ``hidden_size``, ``max_seq_length``, ``pooling`` ("mean"), ``normalize``
- ``io``: dtypes of token ids / mask / hidden states at segment boundaries
- ``segments``: geometry and I/O of every segment (index, layers [a, b], inputs, outputs, ref_from)
- ``variants``: per precision (``fp32``, ``int8``, ...) the files and sha256 of each segment and of
  the monolithic full-depth graph
- ``tokenizer``: files (+ sha256), pad id, max length
- ``exit_policy`` (the default) and ``policy_history``
- ``exit_check``: the build's exit-compatibility check, which decided whether the default exits early
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trt_runtime.errors import ArtifactError, RuntimeInputError
from trt_runtime.fileio import write_json_atomic
from trt_runtime.policy import ExitPolicy

SCHEMA_VERSION = 2  # 2: later segments take mask_bias / pool_weights from the first (1: attention_mask)
FORMAT = "leap-export"
MANIFEST_NAME = "manifest.json"
_REQUIRED = (
    "schema_version", "format", "architecture", "num_layers", "hidden_size", "max_seq_length",
    "pooling", "normalize", "segments", "variants", "tokenizer", "exit_policy",
)  # fmt: skip


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class SegmentSpec:
    index: int
    start: int  # layers (start, end]: start = 0 means the segment also embeds the token ids
    end: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    ref_from: int | None  # index of the segment whose pooled output is this one's reference, if any
    ref_output: str | None  # the name of that output ("pooled" or "pooled_l<r>")
    ref_layer: int  # the score is cos(p_end, p_ref_layer)

    @property
    def takes_ids(self) -> bool:
        return self.start == 0


@dataclass(frozen=True)
class FileEntry:
    file: str  # relative to the artifact folder
    sha256: str


@dataclass(frozen=True)
class TokenizerSpec:
    file: str
    sha256: str
    pad_id: int
    max_length: int  # truncation, special tokens included (the model's max_seq_length)


@dataclass(frozen=True)
class VariantSpec:
    """One build of the graphs: its precision, the backend family that runs it, and its files."""

    name: str
    backend: str  # "onnxruntime" (ONNX graphs: ONNX Runtime on CPU or CUDA) or "tensorrt" (engines)
    precision: str  # fp32, int8, fp16
    segments: tuple[FileEntry, ...]
    full: FileEntry  # the monolithic full-depth graph (or engine)
    full_outputs: tuple[dict[str, Any], ...]  # the full graph's outputs (name, dtype, shape)
    record: dict[str, Any]  # the manifest entry as written: backend-specific keys (a TensorRT build's GPU...)


@dataclass
class Manifest:
    root: Path
    data: dict[str, Any]

    @property
    def num_layers(self) -> int:
        return int(self.data["num_layers"])

    @property
    def hidden_size(self) -> int:
        return int(self.data["hidden_size"])

    @property
    def max_seq_length(self) -> int:
        return int(self.data["max_seq_length"])

    @property
    def normalize(self) -> bool:
        return bool(self.data["normalize"])

    @property
    def patience(self) -> int:
        """The k the convergence scores were exported with (scores are computed inside the graphs)."""
        return int(self.data["exit_policy"]["patience"])

    @property
    def boundaries(self) -> list[int]:
        return [s.end for s in self.segments]

    @property
    def segments(self) -> list[SegmentSpec]:
        return [
            SegmentSpec(
                index=int(s["index"]),
                start=int(s["layers"][0]),
                end=int(s["layers"][1]),
                inputs=tuple(i["name"] for i in s["inputs"]),
                outputs=tuple(o["name"] for o in s["outputs"]),
                ref_from=s.get("ref_from"),
                ref_output=s.get("ref_output") or ("pooled" if s.get("ref_from") is not None else None),
                ref_layer=int(s["ref_layer"]),
            )
            for s in self.data["segments"]
        ]

    @property
    def architecture(self) -> str:
        return str(self.data["architecture"])

    @property
    def source(self) -> dict[str, Any]:
        """What the build came from: ``spec``, ``name``, ``path``, ``weights_sha256`` (any may be absent)."""
        return dict(self.data.get("source") or {})

    @property
    def tokenizer(self) -> TokenizerSpec:
        tok = self.data["tokenizer"]
        return TokenizerSpec(tok["file"], tok["sha256"], int(tok["pad_id"]), int(tok["max_length"]))

    def segment_outputs(self, index: int) -> list[dict[str, Any]]:
        """Segment ``index``'s output entries as written (name, dtype, shape with "batch" / "sequence")."""
        return [dict(o) for o in self.data["segments"][index]["outputs"]]

    def variant_spec(self, name: str | None = None) -> VariantSpec:
        """The typed view of a variant (``name`` None: the default one); an unknown name is an error."""
        v = self.variant(name)
        full = v["full"]
        return VariantSpec(
            name=name or self.default_variant,
            backend=str(v.get("backend", "onnxruntime")),
            precision=str(v.get("precision", name or self.default_variant)),
            segments=tuple(FileEntry(f["file"], f["sha256"]) for f in v["segments"]),
            full=FileEntry(full["file"], full["sha256"]),
            full_outputs=tuple(
                full.get("outputs") or [{"name": "pooled", "dtype": "float32", "shape": ["batch", "hidden"]}]
            ),
            record=v,
        )

    @property
    def default_policy(self) -> ExitPolicy:
        return ExitPolicy.from_dict(self.data["exit_policy"])

    @property
    def exit_check(self) -> dict[str, Any] | None:
        """The build's exit-compatibility check (``passed``, ``failed``, ``reason``...); None for builds older
        than the check."""
        return self.data.get("exit_check")

    def variants(self) -> list[str]:
        return list(self.data["variants"])

    @property
    def default_variant(self) -> str:
        return self.data.get("default_variant") or next(iter(self.data["variants"]))

    def variant(self, name: str | None = None) -> dict[str, Any]:
        name = name or self.default_variant
        if name not in self.data["variants"]:
            raise ArtifactError(
                f"{self.root}: no '{name}' build in this artifact folder (it has: "
                f"{', '.join(self.data['variants'])})"
                + (
                    f"; add it with `leap-export build MODEL --out {self.root} --precision int8`"
                    if name == "int8"
                    else "; pass one of those"
                )
            )
        return self.data["variants"][name]

    def segment_paths(self, variant: str | None = None) -> list[Path]:
        return [self.root / f["file"] for f in self.variant(variant)["segments"]]

    def full_path(self, variant: str | None = None) -> Path:
        return self.root / self.variant(variant)["full"]["file"]

    def tokenizer_path(self) -> Path:
        return self.root / self.tokenizer.file

    def file_entries(self) -> list[dict[str, str]]:
        entries = [{"file": self.data["tokenizer"]["file"], "sha256": self.data["tokenizer"]["sha256"]}]
        for variant in self.data["variants"].values():
            entries += variant["segments"] + [variant["full"]]
        return entries

    def file_problems(self, variant: str | None = None) -> list[str]:
        """What is wrong with the files ``variant`` runs on (its graphs and the tokenizer); [] if intact."""
        v = self.variant(variant)
        wanted = {self.data["tokenizer"]["file"], v["full"]["file"]} | {f["file"] for f in v["segments"]}
        problems, seen = [], set()
        for entry in self.file_entries():
            if entry["file"] not in wanted or entry["file"] in seen:
                continue
            seen.add(entry["file"])
            path = self.root / entry["file"]
            if not path.is_file():
                problems.append(f"missing file {entry['file']}")
            elif sha256_file(path) != entry["sha256"]:
                problems.append(
                    f"{entry['file']} does not match its sha256 in the manifest (corrupt or replaced)"
                )
        return problems

    def rebuild_hint(self, variant: str | None = None, problems: Sequence[str] = ()) -> str:
        """The command that rewrites ``variant``'s files (a quantised variant alone, unless the tokenizer broke)."""
        name, tokenizer = variant or self.default_variant, self.tokenizer.file
        if self.variant_spec(name).backend == "tensorrt":
            return f"`leap-export build {self.root} --out {self.root} --backend tensorrt --force`"
        if name != self.default_variant and not any(tokenizer in p for p in problems):
            return f"`leap-export build {self.root} --out {self.root} --precision {name} --force`"
        return f"`leap-export build {source_arg(self.data)} --out {self.root} --force`"

    def check_files(self, variant: str | None = None) -> None:
        """Every file the manifest names exists and has its recorded sha256; one error lists all faults."""
        problems = self.file_problems(variant)
        if problems:
            raise ArtifactError(
                f"artifact folder {self.root} is not intact: "
                + "; ".join(problems)
                + f". Rebuild it with {self.rebuild_hint(variant, problems)}"
            )

    def save(self) -> None:
        write_json_atomic(self.root / MANIFEST_NAME, self.data)


def source_arg(data: dict) -> str:
    """The MODEL argument that rebuilds these artifacts from any working directory.

    ``source.spec`` is what the user typed: a short name works anywhere, but a relative folder only from
    the directory the build ran in, so a folder spec gives way to the absolute ``source.path``.
    """
    source = data.get("source") or {}
    spec, path = source.get("spec"), source.get("path")
    if not spec:
        return path or "MODEL"
    p = Path(spec)
    is_folder = (
        "/" in spec or os.sep in spec or spec.startswith((".", "~")) or (path and Path(path).name == p.name)
    )
    if path and is_folder and not p.is_absolute():
        return path
    return spec


def load_manifest(
    root: str | os.PathLike, *, check_files: bool = True, variant: str | None = None
) -> Manifest:
    """Load and validate ``root/manifest.json``; with ``check_files`` every referenced file is hashed."""
    root = Path(root)
    path = root / MANIFEST_NAME
    if not root.is_dir():
        raise ArtifactError(f"{root} is not a folder; pass the --out folder of `leap-export build`")
    if not path.is_file():
        raise ArtifactError(f"{root} has no {MANIFEST_NAME}; is it a `leap-export build` output folder?")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} is not valid JSON ({e}); rebuild the artifacts") from None
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ArtifactError(f"{path} lacks {', '.join(missing)}; rebuild the artifacts")
    if data["format"] != FORMAT:
        raise ArtifactError(f"{path}: format '{data['format']}' is not '{FORMAT}'")
    version = data["schema_version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise ArtifactError(
            f"{path}: schema_version must be an integer, got {version!r}; undo the edit or rebuild "
            "the artifacts (`leap-export build MODEL --out DIR --force`)"
        )
    if data["schema_version"] > SCHEMA_VERSION:
        raise ArtifactError(
            f"{path}: schema version {data['schema_version']} is newer than this runtime understands "
            f"({SCHEMA_VERSION}); upgrade leap-export"
        )
    if data["schema_version"] < SCHEMA_VERSION:
        raise ArtifactError(
            f"{path}: schema version {data['schema_version']} was written by an older leap-export whose segment "
            f"graphs take other inputs; rebuild: `leap-export build {source_arg(data)} "
            f"--out {root} --force`"
        )
    _check_structure(data, path)
    manifest = Manifest(root=root, data=data)
    _check_geometry(manifest)
    if check_files:
        manifest.check_files(variant)
    return manifest


def _check_structure(data: dict[str, Any], path: Path) -> None:
    """Types of everything the runtime reads, so a hand-edited manifest fails here with its key path."""

    def fail(where: str, expected: str | None, value: Any = None) -> None:
        problem = "is missing" if expected is None else f"must be {expected}, got {value!r}"
        raise ArtifactError(
            f"{path}: {where} {problem}; undo the edit or rebuild the artifacts "
            "(`leap-export build MODEL --out DIR --force`)"
        )

    def integer(where: str, value: Any, least: int = 1) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            fail(where, "a positive integer" if least == 1 else f"an integer >= {least}", value)

    def named_list(where: str, value: Any) -> None:
        if not isinstance(value, list) or not all(
            isinstance(v, dict) and isinstance(v.get("name"), str) for v in value
        ):
            fail(where, 'a list of {"name": ...} objects', value)

    def file_entry(where: str, value: Any) -> None:
        if not (
            isinstance(value, dict)
            and isinstance(value.get("file"), str)
            and isinstance(value.get("sha256"), str)
        ):
            fail(where, 'an object with "file" and "sha256" strings', value)

    for key in ("num_layers", "hidden_size", "max_seq_length"):
        integer(key, data[key])
    if not isinstance(data["normalize"], bool):
        fail("normalize", "true or false", data["normalize"])
    if data["pooling"] != "mean":
        fail("pooling", '"mean" (LEAP exits on masked mean pooling)', data["pooling"])
    if not isinstance(data["segments"], list) or not data["segments"]:
        fail("segments", "a non-empty list", data["segments"])
    for i, seg in enumerate(data["segments"]):
        where = f"segments[{i}]"
        if not isinstance(seg, dict):
            fail(where, "an object", seg)
        for key in ("index", "layers", "inputs", "outputs", "ref_layer"):
            if key not in seg:
                fail(f"{where}.{key}", None)
        integer(f"{where}.index", seg["index"], least=0)
        layers = seg["layers"]
        if not (
            isinstance(layers, list)
            and len(layers) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in layers)
        ):
            fail(f"{where}.layers", "[first layer - 1, last layer]", layers)
        named_list(f"{where}.inputs", seg["inputs"])
        named_list(f"{where}.outputs", seg["outputs"])
        integer(f"{where}.ref_layer", seg["ref_layer"], least=0)
        if seg.get("ref_from") is not None and (
            isinstance(seg["ref_from"], bool) or not isinstance(seg["ref_from"], int)
        ):
            fail(f"{where}.ref_from", "a segment index or null", seg["ref_from"])
        if seg.get("ref_output") is not None and not isinstance(seg["ref_output"], str):
            fail(f"{where}.ref_output", "an output name or null", seg["ref_output"])
        # the runtime walks the segments in list order and keys exits, the last segment and the
        # reference vectors by index: an index out of place would end the chain early, silently
        if seg["index"] != i:
            fail(f"{where}.index", f"{i} (its place in the list)", seg["index"])
        ref_from = seg.get("ref_from")
        if ref_from is not None:
            if not 0 <= ref_from < i:
                fail(f"{where}.ref_from", f"an earlier segment's index (0..{i - 1}) or null", ref_from)
            ref_output = seg.get("ref_output") or "pooled"
            if ref_output not in [o["name"] for o in data["segments"][ref_from]["outputs"]]:
                fail(f"{where}.ref_output", f"an output of segments[{ref_from}]", ref_output)
    if not isinstance(data["variants"], dict) or not data["variants"]:
        fail("variants", "a non-empty object (precision -> files)", data["variants"])
    for name, variant in data["variants"].items():
        if not isinstance(variant, dict) or not isinstance(variant.get("segments"), list):
            fail(f"variants.{name}", 'an object with a "segments" list', variant)
        for i, entry in enumerate(variant["segments"]):
            file_entry(f"variants.{name}.segments[{i}]", entry)
        file_entry(f"variants.{name}.full", variant.get("full"))
    file_entry("tokenizer", data["tokenizer"])
    for key, least in (("pad_id", 0), ("max_length", 1)):
        if key not in data["tokenizer"]:
            fail(f"tokenizer.{key}", None)
        integer(f"tokenizer.{key}", data["tokenizer"][key], least=least)
    if not isinstance(data["exit_policy"], dict):
        fail("exit_policy", "an object", data["exit_policy"])
    if not isinstance(
        data["exit_policy"].get("enabled", True), bool
    ):  # ExitPolicy would read "false" as True
        fail("exit_policy.enabled", "true or false", data["exit_policy"]["enabled"])
    check = data.get("exit_check")
    if check is not None:
        if not isinstance(check, dict) or not isinstance(check.get("passed"), bool):
            fail("exit_check", 'an object with "passed": true or false', check)
        failed = check.get("failed", [])
        if not isinstance(failed, list) or not all(isinstance(f, str) for f in failed):
            fail("exit_check.failed", "a list of strings", failed)
    try:
        ExitPolicy.from_dict(data["exit_policy"])
    except RuntimeInputError as e:
        raise ArtifactError(
            f"{path}: exit_policy: {e}; fix the value, or set the default with `leap-export calibrate`"
        ) from None


def _check_geometry(m: Manifest) -> None:
    segs = m.segments
    if not segs or segs[0].start != 0 or segs[-1].end != m.num_layers:
        raise ArtifactError(f"{m.root}: segments must start at layer 0 and end at layer {m.num_layers}")
    for prev, seg in zip(segs, segs[1:], strict=False):
        if seg.start != prev.end:
            raise ArtifactError(
                f"{m.root}: segment {seg.index} does not start where segment {prev.index} ends"
            )
    for name, variant in m.data["variants"].items():
        if len(variant["segments"]) != len(segs):
            raise ArtifactError(
                f"{m.root}: variant '{name}' has {len(variant['segments'])} segment files, "
                f"expected {len(segs)}"
            )
