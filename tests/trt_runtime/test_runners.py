"""The process-wide ONNX Runtime thread pool, and other ONNX Runtime sessions in the same process.

Each case runs in a fresh interpreter: the pool and the arena belong to the process, and this test
process has created both long before. The Python loop's sessions live in the Python binding's ONNX
Runtime, whose pool other sessions must then join; the C loop's live in the C library's copy
(trt_runtime/native.py), which leaves the binding's as other libraries expect it.
"""

import subprocess
import sys

import numpy as np
import pytest

SCRIPT = """
import sys
import numpy as np
import onnxruntime as ort
from trt_runtime import EarlyExitEncoder, ort_session_options

art, full, shared, out, loop = sys.argv[1], sys.argv[2], sys.argv[3] == "shared", sys.argv[4], sys.argv[5]
encoder = EarlyExitEncoder(art, shared_pool=shared, loop=loop)
print("loop:", encoder.loop)
np.save(out, encoder.encode(["a first sentence", "and a somewhat longer second sentence", ""]))
try:
    ort.InferenceSession(full)  # another library's session, default options
    print("default session: ok")
except Exception as e:
    print("default session: failed:", e)
ort.InferenceSession(full, sess_options=ort_session_options())
print("session with ort_session_options(): ok")
"""


def _run(tiny_artifacts, tmp_path, mode, loop="python"):
    art = tiny_artifacts["bert"]
    out = tmp_path / f"{mode}-{loop}.npy"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(art), str(art / "full.onnx"), mode, str(out), loop],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout, np.load(out)


def test_the_shared_pool_needs_other_sessions_to_join_it(tiny_artifacts, tmp_path):
    # what the encoder's docstring and docs/runtime.md say: a default session after the encoder fails with
    # ONNX Runtime's own message, and ort_session_options() is the remedy
    stdout, _ = _run(tiny_artifacts, tmp_path, "shared")
    assert "default session: failed:" in stdout and "use_per_session_threads must be false" in stdout
    assert "session with ort_session_options(): ok" in stdout


def test_the_c_loop_leaves_the_python_bindings_onnx_runtime_alone(tiny_artifacts, tmp_path):
    # its shared pool lives in the C library's copy of ONNX Runtime: another library's default session works
    if not __import__("trt_runtime.native").native.extension_path():
        pytest.skip("the C extension is not built here")
    stdout, native = _run(tiny_artifacts, tmp_path, "shared", loop="auto")
    assert "loop: native" in stdout and "default session: ok" in stdout, stdout
    _, python = _run(tiny_artifacts, tmp_path, "shared")
    np.testing.assert_array_equal(native, python)


def test_private_pools_leave_other_sessions_alone_and_embed_the_same(tiny_artifacts, tmp_path):
    stdout, private = _run(tiny_artifacts, tmp_path, "private")
    assert "default session: ok" in stdout and "session with ort_session_options(): ok" in stdout
    _, shared = _run(tiny_artifacts, tmp_path, "shared")
    np.testing.assert_allclose(private, shared, atol=1e-6)


LATER = """
import os
import sys
import numpy as np
from trt_runtime import EarlyExitEncoder

art = sys.argv[1]
other = len(os.sched_getaffinity(0)) + 1  # not the pool's size
texts = ["a first sentence", "and a somewhat longer second sentence", ""]
first = EarlyExitEncoder(art, loop="python").encode(texts)  # creates the process-wide pool (2 threads or more)
for kwargs in ({"threads": other}, {"shared_pool": False}):
    # ONNX Runtime refused both before: they now join
    later = EarlyExitEncoder(art, loop="python", **kwargs).encode(texts)
    assert np.abs(later - first).max() < 1e-6, kwargs
print("ok")
"""


def test_a_later_encoder_with_other_pool_settings_joins_the_pool_with_a_warning(tiny_artifacts):
    proc = subprocess.run([sys.executable, "-c", LATER, str(tiny_artifacts["bert"])], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr
    # once per setting, not once per segment session
    assert (
        proc.stderr.count(
            " threads requested, but this process already has ONNX Runtime's shared thread pool"
        )
        == 1
    )
    assert proc.stderr.count("shared_pool=False requested, but") == 1
    assert "EP Error" not in proc.stderr


LATER_C = """
import os
import sys
import numpy as np
from trt_runtime import EarlyExitEncoder

art = sys.argv[1]
texts = ["a first sentence", "and a somewhat longer second sentence", ""]
first = EarlyExitEncoder(art)
assert first.loop == "native", first.loop_reason
for _ in range(2):
    later = EarlyExitEncoder(art, threads=len(os.sched_getaffinity(0)) + 1)
    assert later.loop == "native" and np.abs(later.encode(texts) - first.encode(texts)).max() < 1e-6
print("ok")
"""


def test_a_later_c_loop_encoder_with_other_threads_joins_its_pool_with_a_warning(tiny_artifacts):
    if not __import__("trt_runtime.native").native.extension_path():
        pytest.skip("the C extension is not built here")
    proc = subprocess.run([sys.executable, "-c", LATER_C, str(tiny_artifacts["bert"])], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr
    assert proc.stderr.count("threads requested, but the C host loop's ONNX Runtime pool already has") == 1


ARENA = """
import sys
from trt_runtime import EarlyExitEncoder


def env_allocators(session):
    try:
        return session.get_session_options().get_session_config_entry("session.use_env_allocators")
    except RuntimeError:  # not set: the session makes an arena of its own
        return "0"


encoder = EarlyExitEncoder(sys.argv[1], shared_pool=sys.argv[2] == "shared", loop="python")
print(sorted({env_allocators(r.session) for r in encoder.runners}))
"""


@pytest.mark.parametrize("mode", ["shared", "private"])
def test_every_segment_session_allocates_from_the_one_arena(tiny_artifacts, mode):
    # shared_pool=False is about thread pools only. With an arena per segment session, memory was a
    # multiple of the shared arena's: LEAP-MiniLM, batch 64 of 256-token texts, peak RSS +2,970 MB against
    # +1,025 MB (batch 32: +1,483 MB against +513 MB), with no faster run to show for it
    proc = subprocess.run([sys.executable, "-c", ARENA, str(tiny_artifacts["bert"]), mode], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "['1']"


def _fake_cgroup(monkeypatch, tmp_path, proc_cgroup: str, files: dict[str, str], cores: int = 16):
    import os

    import trt_runtime.runners as runners

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "proc-self-cgroup").write_text(proc_cgroup)
    monkeypatch.setattr(runners, "_CGROUP_ROOT", tmp_path)
    monkeypatch.setattr(runners, "_PROC_CGROUP", tmp_path / "proc-self-cgroup")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    return runners.default_threads()


@pytest.mark.parametrize(
    ("proc_cgroup", "files", "threads"),
    [
        # a container (cgroup namespace: its cgroup is the root) with a 2-CPU quota on a 16-core node
        ("0::/\n", {"cpu.max": "200000 100000\n"}, 2),
        ("0::/\n", {"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs: rounded up
        ("0::/\n", {"cpu.max": "max 100000\n"}, 16),  # no quota
        ("0::/\n", {"cpu.max": "6400000 100000\n"}, 16),  # a quota above the cores: the cores
        # no cgroup namespace: the process's own cgroup, under a parent with a tighter quota
        (
            "0::/kubepods/pod1/c1\n",
            {"kubepods/pod1/cpu.max": "100000 100000\n", "kubepods/pod1/c1/cpu.max": "max 100000\n"},
            1,
        ),
        # cgroup v1 (docker --cpus 3 on an older host), and v1 without a quota
        (
            "4:cpu,cpuacct:/\n",
            {"cpu,cpuacct/cpu.cfs_quota_us": "300000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"},
            3,
        ),
        (
            "4:cpu,cpuacct:/docker/abc\n",
            {"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"},
            16,
        ),
        ("", {}, 16),  # no cgroup information at all
    ],
)
def test_default_threads_follow_a_containers_cpu_quota(monkeypatch, tmp_path, proc_cgroup, files, threads):
    # the affinity of a container with a CPU quota is every core of the node: a spinning pool that size
    # oversubscribes the quota (8 threads on 2 cores: batch 32 5x slower, batch-1 p99 7x)
    assert _fake_cgroup(monkeypatch, tmp_path, proc_cgroup, files) == threads


THREADS = """
import os
import sys
import onnxruntime  # noqa: F401 - its import starts threads of its own: counted before, not as the pool's
from trt_runtime import EarlyExitEncoder

threads, shared, loop = int(sys.argv[2]), sys.argv[3] == "shared", sys.argv[4]
before = len(os.listdir("/proc/self/task"))
encoder = EarlyExitEncoder(sys.argv[1], threads=threads, shared_pool=shared, loop=loop)
encoder.encode(["a first sentence", "and a somewhat longer second sentence"])
new = len(os.listdir("/proc/self/task")) - before
if loop == "native":  # the C library's pool; its sessions are not the Python binding's
    print(len(encoder.segments), new, "[0]", "['-']", sep="|")
    sys.exit()


def spinning(session):
    try:
        return session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
    except RuntimeError:  # not set on the session: the shared pool's own setting applies
        return "-"


print(len(encoder.runners), new, sorted({r.session.get_session_options().intra_op_num_threads for r in encoder.runners}),
      sorted({spinning(r.session) for r in encoder.runners}), sep="|")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts the process's threads in /proc")
@pytest.mark.parametrize("mode,loop", [("shared", "python"), ("private", "python"), ("shared", "native")])
def test_the_pool_has_the_threads_asked_for(tiny_artifacts, mode, loop):
    # shared: ONE pool of `threads` (the calling thread and threads - 1 workers) however many segments, in
    # the Python binding's ONNX Runtime or the C library's; private (shared_pool=False): each segment
    # session's own pool of `threads`, spinning off
    if loop == "native" and not __import__("trt_runtime.native").native.extension_path():
        pytest.skip("the C extension is not built here")
    threads = 3
    proc = subprocess.run([sys.executable, "-c", THREADS, str(tiny_artifacts["bert"]), str(threads), mode, loop],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sessions, new, per_session, spinning = proc.stdout.strip().split("|")
    sessions, new = int(sessions), int(new)
    assert sessions == 3
    if mode == "shared" and loop == "native":
        # threads - 1 pool workers; the C library's environment starts one more thread of its own, idle
        # (measured: no CPU time after 300 batch-1 encodes). Per-session pools would be 3 x 2 more
        assert new in (threads - 1, threads)
    elif mode == "shared":
        assert (new, per_session) == (threads - 1, "[0]")  # 0: the session has no pool of its own
        assert spinning == "['-']"
    else:
        assert (new, per_session) == (sessions * (threads - 1), f"[{threads}]")
        assert (
            spinning == "['0']"
        )  # several pools spinning on the same cores would steal them from each other


def test_an_accelerator_that_is_not_there_is_an_error_not_the_cpu(tiny_artifacts):
    """ONNX Runtime alone would log a warning and run on the CPU; a runner asked for a provider refuses."""
    from trt_runtime.errors import RuntimeInputError
    from trt_runtime.runners import OrtRunner

    with pytest.raises(
        RuntimeInputError, match="TensorrtExecutionProvider is not available in this onnxruntime"
    ):
        OrtRunner(tiny_artifacts["bert"] / "full.onnx", providers=["TensorrtExecutionProvider"]).activate()
    with pytest.raises(RuntimeInputError, match="a list of provider names"):
        OrtRunner(tiny_artifacts["bert"] / "full.onnx", providers="CPUExecutionProvider").activate()
