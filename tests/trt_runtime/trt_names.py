"""The TensorRT name check: every TensorRT name our code uses, looked up in TensorRT's real compiled bindings.

TensorRT's libraries cannot be installed where this project is developed, so code that calls TensorRT cannot
run here. What can be read here are the Python bindings: ``tensorrt-cu12-bindings`` wheels on PyPI are real
(about 1.3 MB each) and their compiled module holds, as C strings in its read-only data (``.rodata``), the name
of every class, method, property and enum member pybind11 registers. This module

- walks our code's syntax tree for the names it uses on TensorRT (:func:`trt_attribute_uses`): attributes of
  the ``tensorrt`` module and of everything derived from it (builder, config, engine, context...), tracked
  through assignments, ``self`` attributes, calls of the module's own functions and classes;
- fetches the newest wheel of each TensorRT major version from PyPI (:func:`latest_versions`,
  :func:`fetch_wheel`) and reads the names out of its compiled module (:class:`BindingNames`);
- reports the names a version lacks (:func:`missing`).

What this cannot see: which class a name belongs to (``FP16`` found as a member of any enum counts), names
merged by the linker into the tail of a longer string (``Builder`` is stored as the tail of
``IExprBuilder``: any identifier ending in the name counts, a weaker proof), argument lists and types,
behaviour, and anything Polygraphy does beyond the names ``builder_steps`` declares for it.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import struct
import sys
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterable
from pathlib import Path

PACKAGE = "tensorrt-cu12-bindings"
PYPI_JSON = f"https://pypi.org/pypi/{PACKAGE}/json"
_IDENT = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*")


# -- the names our code uses -----------------------------------------------------------------------------


def _key(node: ast.AST) -> str | None:
    """The tracking key of an assignment target or reference: ``x`` or ``self.x``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return f"self.{node.attr}"
    return None


def trt_attribute_uses(
    source: str, returns_trt: Iterable[str] = ("import_tensorrt",)
) -> dict[str, list[int]]:
    """Every attribute name used on TensorRT in ``source`` (a module's text) -> the lines using it.

    TensorRT values: names bound by ``import tensorrt [as x]``, parameters named ``trt``, the results of
    calls of the functions ``returns_trt`` (which return the module), and, to a fixed point, whatever is
    assigned from an attribute, call or subscript of a TensorRT value, including ``self.x`` attributes and the
    parameters of this module's functions and classes that receive one. Flow-insensitive (a name is a
    TensorRT value everywhere once it is one anywhere): it errs towards reporting more names, never fewer.
    """
    tree = ast.parse(source)
    tainted: set[str] = set()
    returning = set(returns_trt)
    functions: dict[str, list[str]] = {}  # module-level function or class -> its parameter names
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            functions[node.name] = [a.arg for a in node.args.args]
        elif isinstance(node, ast.ClassDef):
            init = next(
                (n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None
            )
            if init is not None:
                functions[node.name] = [a.arg for a in init.args.args[1:]] + [
                    a.arg for a in init.args.kwonlyargs
                ]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "tensorrt":
                    tainted.add(alias.asname or alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module == "tensorrt":
            for alias in node.names:
                tainted.add(alias.asname or alias.name)
        elif isinstance(node, ast.arg) and node.arg == "trt":
            tainted.add("trt")

    def is_trt(node: ast.AST | None) -> bool:
        if node is None:
            return False
        key = _key(node)
        if key is not None and key in tainted:
            return True
        if isinstance(node, ast.Attribute | ast.Subscript | ast.Starred):
            return is_trt(node.value)
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name) and node.func.id in returning:
                return True
            return is_trt(node.func)
        if isinstance(node, ast.Tuple | ast.List):
            return any(is_trt(e) for e in node.elts)
        if isinstance(node, ast.IfExp):
            return is_trt(node.body) or is_trt(node.orelse)
        return False

    def bind(target: ast.AST, value: ast.AST | None) -> bool:
        if isinstance(target, ast.Tuple | ast.List):
            if isinstance(value, ast.Tuple | ast.List) and len(value.elts) == len(target.elts):
                return any([bind(t, v) for t, v in zip(target.elts, value.elts, strict=True)])
            return any([bind(t, value) for t in target.elts])
        key = _key(target)
        if key is not None and key not in tainted and is_trt(value):
            tainted.add(key)
            return True
        return False

    changed = True
    while changed:
        changed = False
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    changed |= bind(target, node.value)
            elif isinstance(node, ast.AnnAssign | ast.NamedExpr):
                changed |= bind(node.target, node.value)
            elif isinstance(node, ast.withitem) and node.optional_vars is not None:
                changed |= bind(node.optional_vars, node.context_expr)
            elif isinstance(node, ast.For | ast.comprehension):
                changed |= bind(node.target, node.iter)
            elif isinstance(node, ast.FunctionDef | ast.Lambda):
                body = node.body if isinstance(node.body, list) else [ast.Return(node.body)]
                if isinstance(node, ast.FunctionDef) and node.name not in returning:
                    for sub in body:
                        for ret in ast.walk(sub):
                            if isinstance(ret, ast.Return) and is_trt(ret.value):
                                returning.add(node.name)
                                changed = True
                                break
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in functions:
                params = functions[node.func.id]
                for param, arg in zip(params, node.args, strict=False):
                    if param not in tainted and is_trt(arg):
                        tainted.add(param)
                        changed = True
                for kw in node.keywords:
                    if kw.arg in params and kw.arg not in tainted and is_trt(kw.value):
                        tainted.add(kw.arg)
                        changed = True

    uses: dict[str, list[int]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_trt(node.value):
            uses.setdefault(node.attr, []).append(node.lineno)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr")
            and len(node.args) >= 2
            and is_trt(node.args[0])
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            uses.setdefault(node.args[1].value, []).append(node.lineno)
    return uses


def undeclared(source: str, declared: Iterable[str]) -> dict[str, list[int]]:
    """Names used on TensorRT in ``source`` that its ``TRT_NAMES`` (``declared``) does not list."""
    known = set(declared)
    return {name: lines for name, lines in trt_attribute_uses(source).items() if name not in known}


# -- the names a TensorRT version has ------------------------------------------------------------------------


def _rodata(blob: bytes) -> bytes:
    """The read-only data sections of an ELF64 little-endian shared object; the whole file otherwise."""
    if blob[:4] != b"\x7fELF" or blob[4] != 2 or blob[5] != 1:
        return blob
    shoff = struct.unpack_from("<Q", blob, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", blob, 0x3A)

    def header(i: int) -> tuple[int, int, int]:
        base = shoff + i * shentsize
        name = struct.unpack_from("<I", blob, base)[0]
        offset, size = struct.unpack_from("<QQ", blob, base + 24)
        return name, offset, size

    _, str_off, str_size = header(shstrndx)
    names = blob[str_off : str_off + str_size]
    parts = []
    for i in range(shnum):
        name, offset, size = header(i)
        section = names[name : names.index(b"\0", name)]
        if section == b".rodata" or section.startswith(b".rodata."):
            parts.append(blob[offset : offset + size])
    return b"\0".join(parts) if parts else blob


class BindingNames:
    """The names one ``tensorrt_bindings`` wheel defines: identifiers among the C strings of its compiled
    module's read-only data, and the top-level names of its Python files (``nptype``, ``__version__``)."""

    def __init__(self, wheel: Path) -> None:
        self.wheel = Path(wheel)
        self.identifiers: set[str] = set()
        self.python: set[str] = set()
        with zipfile.ZipFile(self.wheel) as z:
            for info in z.infolist():
                if not info.filename.startswith("tensorrt_bindings/"):
                    continue
                if info.filename.endswith((".so", ".pyd")) or ".so." in info.filename:
                    for piece in _rodata(z.read(info)).split(b"\0"):
                        if _IDENT.fullmatch(piece):
                            self.identifiers.add(piece.decode())
                elif info.filename == "tensorrt_bindings/__init__.py":
                    self.python |= _top_level_names(z.read(info).decode())
        if not self.identifiers:
            raise ValueError(f"{self.wheel} holds no compiled tensorrt_bindings module")
        self._tails = {s[i:] for s in self.identifiers for i in range(len(s))}

    def exact(self, name: str) -> bool:
        return name in self.identifiers or name in self.python

    def __contains__(self, name: str) -> bool:
        return self.exact(name) or name in self._tails


def _top_level_names(source: str) -> set[str]:
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def missing(names: Iterable[str], bindings: BindingNames) -> list[str]:
    """The ``names`` the bindings lack, sorted."""
    return sorted({n for n in names if n not in bindings})


# -- fetching the wheels ---------------------------------------------------------------------------------


def _version_key(version: str) -> tuple[tuple[int, ...], int] | None:
    """A sortable key of a final release ("10.13.3.9" < "10.13.3.9.post1"); None for a pre-release."""
    m = re.fullmatch(r"(\d+(?:\.\d+)*)(?:\.post(\d+))?", version)
    if not m:
        return None
    return tuple(map(int, m.group(1).split("."))), int(m.group(2)) if m.group(2) else -1


def _pick_file(files: list[dict]) -> dict | None:
    """The wheel to read: a manylinux x86_64 one (ELF, so its .rodata is found), else any wheel."""
    wheels = [f for f in files if f.get("filename", "").endswith(".whl") and not f.get("yanked")]
    linux = [f for f in wheels if "manylinux" in f["filename"] and "x86_64" in f["filename"]]
    ours = [f for f in linux if f"-cp{sys.version_info[0]}{sys.version_info[1]}-" in f["filename"]]
    return (ours or linux or wheels or [None])[0]


def latest_versions(releases: dict[str, list[dict]], majors: Iterable[int] = (10, 11)) -> dict[int, str]:
    """The newest final, unyanked release with a wheel, per major version, from PyPI's ``releases`` table."""
    best: dict[int, tuple[tuple, str]] = {}
    for version, files in releases.items():
        key = _version_key(version)
        if key is None or _pick_file(files) is None:
            continue
        major = key[0][0]
        if major in majors and (major not in best or key > best[major][0]):
            best[major] = (key, version)
    return {major: version for major, (_, version) in best.items()}


def pypi_releases(package: str = PACKAGE, timeout: float = 30) -> dict[str, list[dict]]:
    """PyPI's release table of ``package`` (raises ``OSError``/``URLError`` when PyPI cannot be reached)."""
    with urllib.request.urlopen(f"https://pypi.org/pypi/{package}/json", timeout=timeout) as response:
        return json.load(response)["releases"]


def latest_release(releases: dict[str, list[dict]]) -> str:
    """The newest final, unyanked release with a wheel."""
    keyed = [(key, v) for v in releases if (key := _version_key(v)) is not None and _pick_file(releases[v])]
    return max(keyed)[1]


# -- Polygraphy's side of our calls ----------------------------------------------------------------------------


def polygraphy_parameters(wheel: Path, module: str) -> dict[str, set[str]]:
    """For the classes of Polygraphy's ``module`` (``polygraphy.backend.trt``): class name -> the keyword
    parameters its constructor takes (through ``**kwargs`` to its bases), and ``Class.method`` -> a method's."""
    folder = module.replace(".", "/")
    found: dict[str, list[tuple[str, list[str], dict[str, tuple[set[str], bool]]]]] = {}
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if not (info.filename.startswith("polygraphy/") and info.filename.endswith(".py")):
                continue
            for node in ast.walk(ast.parse(z.read(info).decode())):
                if isinstance(node, ast.ClassDef):
                    methods = {}
                    for f in node.body:
                        if isinstance(f, ast.FunctionDef):
                            args = f.args
                            names = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}
                            methods[f.name] = (names - {"self"}, args.kwarg is not None)
                    bases = [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases]
                    found.setdefault(node.name, []).append((info.filename, bases, methods))

    def pick(name: str, near: str):
        """The class ``name`` defined under ``near`` (a folder), else the only one of that name."""
        candidates = found.get(name, [])
        here = [c for c in candidates if c[0].startswith(near + "/") or c[0] == near + ".py"]
        return (here or (candidates if len(candidates) == 1 else []) or [None])[0]

    def init_params(name: str, near: str, seen: frozenset = frozenset()) -> set[str]:
        entry = pick(name, near)
        if entry is None or name in seen:
            return set()
        path, bases, methods = entry
        params, forwards = methods.get("__init__", (set(), True))
        if forwards:
            for base in bases:
                params = params | init_params(base, path.rsplit("/", 1)[0], seen | {name})
        return params

    out: dict[str, set[str]] = {}
    for name in found:
        entry = pick(name, folder)
        if entry is None or not entry[0].startswith(folder):
            continue
        out[name] = init_params(name, folder)
        for method, (params, _) in entry[2].items():
            out[f"{name}.{method}"] = params
    return out


def polygraphy_calls(source: str) -> dict[str, tuple[str, set[str]]]:
    """The keywords our code passes to each Polygraphy name it imports and calls: name -> (the module it is
    imported from, keyword names)."""
    tree = ast.parse(source)
    imported = {
        alias.asname or alias.name: node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("polygraphy")
        for alias in node.names
    }
    calls: dict[str, tuple[str, set[str]]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in imported:
            module = imported[node.func.id]
            calls.setdefault(node.func.id, (module, set()))[1].update(
                kw.arg for kw in node.keywords if kw.arg
            )
    return calls


def fetch_wheel(version: str, files: list[dict], cache: Path, timeout: float = 120) -> Path:
    """The wheel of ``version`` in ``cache``, downloaded (and its sha256 checked against PyPI's) if absent."""
    chosen = _pick_file(files)
    if chosen is None:
        raise ValueError(f"{PACKAGE} {version} has no wheel on PyPI")
    path = Path(cache) / chosen["filename"]
    if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == chosen["digests"]["sha256"]:
        return path
    url = urllib.parse.urljoin(PYPI_JSON, chosen["url"])  # a mirror may give it relative to the JSON
    with urllib.request.urlopen(url, timeout=timeout) as response:
        data = response.read()
    if hashlib.sha256(data).hexdigest() != chosen["digests"]["sha256"]:
        raise ValueError(f"{url}: sha256 does not match PyPI's")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def cached_wheels(cache: Path) -> dict[int, tuple[str, Path]]:
    """The newest wheel per major version already in ``cache`` (PyPI unreachable: use what an earlier run
    fetched)."""
    best: dict[int, tuple[tuple, str, Path]] = {}
    for path in Path(cache).glob("tensorrt_cu12_bindings-*.whl"):
        version = path.name.split("-")[1]
        key = _version_key(version)
        if key is not None and (key[0][0] not in best or key > best[key[0][0]][0]):
            best[key[0][0]] = (key, version, path)
    return {major: (version, path) for major, (_, version, path) in best.items()}
