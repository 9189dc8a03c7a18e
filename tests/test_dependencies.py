"""Lazy imports: the runtime never needs torch, and every --help works without torch or transformers."""

import importlib
import pkgutil
import subprocess
import sys

import leap_export
import trt_runtime
from leap_export.cli import COMMANDS

BLOCK = (
    "import sys\n"
    "class Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in {blocked!r}:\n"
    "            raise ImportError('blocked for this test: ' + name)\n"
    "sys.meta_path.insert(0, Block())\n"
)


def _python(code: str, blocked: set[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK.format(blocked=blocked) + code],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_runtime_imports_and_encodes_without_torch(tiny_artifacts):
    code = (
        "from trt_runtime import EarlyExitEncoder\n"
        f"e = EarlyExitEncoder({str(tiny_artifacts['bert'])!r})\n"
        "print(e.encode(['hello world']).shape)\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
    )
    proc = _python(code, {"torch", "transformers", "sentence_transformers"})
    assert proc.returncode == 0, proc.stderr
    assert "(1, 32)" in proc.stdout


def test_every_help_works_without_torch():
    code = (
        "from click.testing import CliRunner\n"
        "from leap_export.cli import cli, COMMANDS\n"
        "r = CliRunner().invoke(cli, ['--help']); assert r.exit_code == 0, r.output\n"
        "for name in cli.list_commands(None):\n"
        "    r = CliRunner().invoke(cli, [name, '--help'])\n"
        "    assert r.exit_code == 0, (name, r.output, r.exception)\n"
        "assert 'torch' not in sys.modules\n"
        "print('ok')\n"
    )
    proc = _python(code, {"torch", "transformers", "sentence_transformers", "tensorrt", "matplotlib"})
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_command_is_registered_and_every_module_imports():
    import leap_export.commands as commands

    present = {
        m.name.replace("_", "-")
        for m in pkgutil.iter_modules(commands.__path__)
        if not m.name.startswith("_")
    }
    assert not present - set(COMMANDS), "a command module exists that the CLI does not list"
    assert {"build", "encode", "verify", "inspect", "bench"} <= present
    for pkg in (leap_export, trt_runtime):
        for mod in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if (
                mod.name == "trt_runtime.libleap_runtime"
            ):  # the C host loop: a library for ctypes (trt_runtime/native.py)
                continue
            importlib.import_module(mod.name)
