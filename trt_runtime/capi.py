"""Where the C API is installed: the header, the library, ONNX Runtime's C library (as ``pybind11 --includes``).

``python -m trt_runtime.capi --includes --libs`` (or ``leap-export c-api ...``) prints compiler and linker
flags for a C or C++ program using ``leap_runtime.h``; ``--include-dir``, ``--lib-dir``, ``--library`` and
``--ort-library`` print single paths for CMake. docs/c-api.md shows both in use.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from trt_runtime.errors import RuntimeInputError

FLAGS = {
    "includes": "compiler flags: -I<folder of leap_runtime.h>",
    "libs": "linker flags: -L<folder> -lleap_runtime -Wl,-rpath,<folder>",
    "include_dir": "the folder holding leap_runtime.h",
    "lib_dir": "the folder holding libleap_runtime.so",
    "library": "the path of libleap_runtime.so",
    "ort_library": "the path of ONNX Runtime's C library in the installed onnxruntime wheel",
}


def _library() -> Path:
    from trt_runtime import native

    path = native.extension_path()
    if path is None:
        raise RuntimeInputError(
            f"the C library trt_runtime/{native.LIBRARY_NAME} is not built: reinstall leap-export with a C "
            "compiler present (pip install -e . or pip install leap-export)"
        )
    return path


def value(name: str) -> str:
    """One of :data:`FLAGS` as text (paths quoted for a shell where they need it)."""
    from trt_runtime import native

    q = shlex.quote
    if name == "includes":
        return f"-I{q(str(native.header_dir()))}"
    if name == "include_dir":
        return str(native.header_dir())
    if name == "ort_library":
        ort = native.onnxruntime_library()
        if ort is None:
            raise RuntimeInputError("the installed onnxruntime wheel has no libonnxruntime.so")
        return str(ort)
    lib = _library()
    if name == "libs":
        return f"-L{q(str(lib.parent))} -lleap_runtime -Wl,-rpath,{q(str(lib.parent))}"
    if name == "lib_dir":
        return str(lib.parent)
    if name == "library":
        return str(lib)
    raise KeyError(name)


def summary() -> str:
    """Every location, one per line, and the library's version (loaded without starting ONNX Runtime)."""
    import ctypes

    from trt_runtime import native

    lines = [f"header       {native.header_dir() / 'leap_runtime.h'}"]
    lib = native.extension_path()
    if lib is None:
        lines.append("library      not built (reinstall leap-export with a C compiler present)")
    else:
        version = ctypes.CDLL(str(lib)).leap_version_string
        version.restype = ctypes.c_char_p
        lines.append(f"library      {lib} (leap_runtime {version().decode()})")
    ort = native.onnxruntime_library()
    lines.append(f"onnxruntime  {ort if ort else 'not found (pip install onnxruntime)'}")
    lines.append(f"flags        {value('includes')} {value('libs') if lib else ''}".rstrip())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trt_runtime.capi", description=__doc__.splitlines()[0])
    for name, help in FLAGS.items():
        parser.add_argument("--" + name.replace("_", "-"), action="store_true", help=help)
    args = parser.parse_args(argv)
    asked = [name for name in FLAGS if getattr(args, name)]
    try:
        print(" ".join(value(name) for name in asked) if asked else summary())
    except RuntimeInputError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
