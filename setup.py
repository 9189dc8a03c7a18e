"""The one thing pyproject.toml does not declare: trt_runtime's C library, ``libleap_runtime.so``.

``trt_runtime/_native/leap_runtime.c`` (public header ``trt_runtime/_native/include/leap_runtime.h``) is built
as ``trt_runtime/libleap_runtime.so``: a plain shared library, not a Python module (it needs no Python
headers), named so that C and C++ programs link it with ``-lleap_runtime`` (``leap-export c-api --libs``) and
loaded with ctypes by ``trt_runtime/native.py``. Optional: without a C compiler the install goes on and the
runtime runs its Python loop instead (docs/runtime.md).
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

LIBRARY = "trt_runtime.libleap_runtime"


class BuildExt(build_ext):
    def get_ext_filename(self, fullname):
        # libleap_runtime.so, not libleap_runtime.cpython-311-x86_64-linux-gnu.so: the name the linker's
        # -lleap_runtime and the library's soname expect
        # (distutils asks with the full dotted name, or with its last part when it places the file itself)
        if fullname == LIBRARY:
            return "trt_runtime/libleap_runtime.so"
        if fullname == LIBRARY.rpartition(".")[2]:
            return "libleap_runtime.so"
        return super().get_ext_filename(fullname)

    def get_export_symbols(self, ext):
        # no PyInit_ function to export: the public symbols are the LEAP_API ones of the header
        return [] if ext.name == LIBRARY else super().get_export_symbols(ext)


setup(
    cmdclass={"build_ext": BuildExt},
    ext_modules=[
        Extension(
            LIBRARY,
            sources=["trt_runtime/_native/leap_runtime.c", "trt_runtime/_native/leap_json.c"],
            depends=[
                "trt_runtime/_native/include/leap_runtime.h",
                "trt_runtime/_native/ort_api.h",
                "trt_runtime/_native/leap_json.h",
            ],
            include_dirs=["trt_runtime/_native/include"],
            libraries=["dl", "pthread", "m"],
            extra_compile_args=["-O2", "-std=c11", "-fvisibility=hidden"],
            extra_link_args=["-Wl,-soname,libleap_runtime.so"],
            optional=True,
        )
    ],
)
