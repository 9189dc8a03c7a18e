import click

from leap_export.commands._options import artifacts_argument
from leap_export.commands.triton import model_options, serve_options


def _port(ctx, param, value):
    if not 0 <= value <= 65535:
        raise click.BadParameter(f"must be a port number (0: a free one), got {value}")
    return value


@click.command("serve")
@artifacts_argument
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (0.0.0.0: every interface, for a container).",
)
@click.option(
    "--http-port",
    type=int,
    default=8000,
    show_default=True,
    callback=_port,
    help="HTTP/REST port (0: a free one).",
)
@click.option(
    "--grpc-port",
    type=int,
    default=8001,
    show_default=True,
    callback=_port,
    help="gRPC port (0: a free one).",
)
@click.option(
    "--metrics-port",
    type=int,
    default=8002,
    show_default=True,
    callback=_port,
    help="Prometheus /metrics port (0: a free one).",
)
@model_options
@click.option(
    "--env",
    "env_path",
    type=click.Path(file_okay=False, path_type=str),
    default=None,
    help="The server's Python environment (numpy<2), made there on first use from PyPI. Default: "
    "$LEAP_TRITON_ENV, else ~/.cache/leap-export/triton-env-py3.X.",
)
def command(artifacts, host, http_port, grpc_port, metrics_port, env_path, **options):
    """Serve an artifact folder with Triton Inference Server until Ctrl-C or SIGTERM."""
    from leap_export.triton.serve import serve

    serve(
        artifacts,
        serve_options(**options),
        host=host,
        ports={"http": http_port, "grpc": grpc_port, "metrics": metrics_port},
        env_path=env_path,
        echo=click.echo,
    )
