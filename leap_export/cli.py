"""The ``leap-export`` command line: a thin layer over the library.

Commands are loaded lazily (each lives in ``leap_export/commands/<name>.py`` and exposes ``command``),
so ``leap-export --help`` works without torch, transformers or a GPU stack importable.
"""

from __future__ import annotations

import importlib
import sys

import click

COMMANDS = {
    "build": "Export a model into per-layer-segment ONNX graphs + manifest.",
    "encode": "Embed sentences with early exit (per-sample batch compaction).",
    "verify": "Prove parity: PyTorch vs ONNX Runtime, per segment and end to end.",
    "inspect": "Print a readable summary of an artifact folder's manifest.",
    "bench": "Latency: monolithic vs segmented (exits off) vs early exit.",
    "corpus": "Build the offline training corpus (deduplicated, split).",
    "train": "LEAP (or baseline) distillation training with checkpoints and resume.",
    "diagnose": "The paper's exit-compatibility diagnostics and deployment checklist.",
    "evaluate": "Quality of exited embeddings on offline labelled sets.",
    "calibrate": "Sweep theta and write the cheapest policy that meets a quality budget.",
    "tokenize": "Token ids as the runtime computes them, for programs without Python (C API).",
    "c-api": "Where the C API's header and library are (compiler and linker flags).",
    "triton": "Write a Triton model repository (text in, early-exit embeddings out).",
    "serve": "Serve an artifact folder with Triton Inference Server (Ctrl-C stops it).",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return [name for name in COMMANDS if self._module(name) is not None]

    @staticmethod
    def _module(name: str):
        try:
            return importlib.util.find_spec(f"leap_export.commands.{name.replace('-', '_')}")
        except ModuleNotFoundError:
            return None

    def get_command(self, ctx, name):
        if name not in COMMANDS or self._module(name) is None:
            return None
        module = importlib.import_module(f"leap_export.commands.{name.replace('-', '_')}")
        return module.command

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="leap-export")
def cli() -> None:
    """leap-export: LEAP early-exit sentence embeddings, from training to deployment."""


def _exit_on_termination() -> None:
    """SIGTERM / SIGHUP (a service manager stopping the job, a closed terminal) unwind like Ctrl-C.

    Their default action kills the process on the spot, leaving the hidden temporary files of a write in
    progress behind (``.emb.npy.*.tmp``, a piped input's copy: as large as the outputs and inputs). Raised
    as ``SystemExit(128 + signal)`` instead, every ``finally`` runs: temporaries are removed, earlier outputs
    stay, and the exit status is the one the signal would give in a shell (143, 129). A signal the parent
    set to be ignored (``nohup``) stays ignored; a second one kills as before.
    """
    import signal

    def stop(signum, frame):
        signal.signal(signum, signal.SIG_DFL)
        click.echo(f"aborted ({signal.Signals(signum).name})", err=True)
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None and signal.getsignal(sig) == signal.SIG_DFL:
            signal.signal(sig, stop)


def main() -> None:
    import logging

    from leap_export.errors import ArtifactError, LeapError, OutputPathError, RuntimeInputError

    handler = logging.StreamHandler()  # the tool's own warnings, marked as such, on stderr
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    for name in ("leap_export", "trt_runtime"):
        logging.getLogger(name).addHandler(handler)
    _exit_on_termination()
    try:
        cli.main(standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("aborted", err=True)
        sys.exit(130)
    except ImportError as e:
        if not isinstance(e.__context__, KeyboardInterrupt):  # Ctrl-C while a native library initialised
            raise
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:  # one line, as every other error: usage text is what --help is for
        hint = ""
        if isinstance(e, click.UsageError) and e.ctx is not None:
            hint = f" (see `{e.ctx.command_path} --help`)"
        click.secho(f"Error: {e.format_message()}{hint}", fg="red", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except (LeapError, ArtifactError, OutputPathError, RuntimeInputError) as e:
        click.secho(f"Error: {e}", fg="red", err=True)  # click's own prefix, for one style
        sys.exit(2)


if __name__ == "__main__":
    main()
