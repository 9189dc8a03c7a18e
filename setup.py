"""The one thing pyproject.toml does not declare: trt_runtime's host loop in C.

``trt_runtime/_native/chain.c`` is built as ``trt_runtime/_chain*.so`` and loaded with ctypes by
``trt_runtime/native.py`` (it is not a Python module and needs no Python headers). Optional: without a
C compiler the install goes on and the runtime runs its Python loop instead (docs/runtime.md).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "trt_runtime._chain",
            sources=["trt_runtime/_native/chain.c"],
            depends=["trt_runtime/_native/ort_api.h"],
            libraries=["dl", "pthread"],
            extra_compile_args=["-O2", "-std=c11"],
            optional=True,
        )
    ]
)
