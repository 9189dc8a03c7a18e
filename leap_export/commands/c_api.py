import click


@click.command("c-api")
@click.option("--includes", is_flag=True, help="Compiler flags: -I<folder of leap_runtime.h>.")
@click.option("--libs", is_flag=True, help="Linker flags: -L<folder> -lleap_runtime -Wl,-rpath,<folder>.")
@click.option("--include-dir", is_flag=True, help="The folder holding leap_runtime.h.")
@click.option("--lib-dir", is_flag=True, help="The folder holding libleap_runtime.so.")
@click.option("--library", is_flag=True, help="The path of libleap_runtime.so.")
@click.option(
    "--ort-library", is_flag=True, help="ONNX Runtime's C library in the installed onnxruntime wheel."
)
def command(**flags):
    """Where the C API's header and library are, as compiler and linker flags (docs/c-api.md).

    With no option: every location and the library's version. Options print on one line, in the order
    listed here, e.g. `g++ app.cpp $(leap-export c-api --includes --libs)`."""
    from trt_runtime import capi

    asked = [name for name in capi.FLAGS if flags[name]]
    click.echo(" ".join(capi.value(name) for name in asked) if asked else capi.summary())
