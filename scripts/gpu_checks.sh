#!/usr/bin/env bash
# The GPU checks, as one script for a machine with an NVIDIA GPU (docs/gpu.md, "Running the GPU checks").
#
#   scripts/gpu_checks.sh RESULTS                     # the environment and the tests marked gpu
#   scripts/gpu_checks.sh RESULTS MODEL SENTENCES     # and MODEL built, verified and benched on the GPU
#
# RESULTS (created) receives:
#   summary.txt   one line per step: its name, exit status, seconds, or why it did not run
#   env.txt       GPU, driver, Python and library versions, ONNX Runtime's providers, the backend `auto` picks
#   tests.log     pytest -m gpu (CuPy compaction and CUDA events; ONNX Runtime CUDA with and without CUDA graphs
#                 where onnxruntime-gpu is installed; TensorRT where it is)
# and with MODEL (a model folder, e.g. a LEAP-trained MiniLM) and SENTENCES (one per line):
#   art/          MODEL built (fp32, exits on) plus its fp16 variant
#   verify-fp16.json / verify-fp16.txt   PyTorch vs ONNX Runtime CPU (FP16 emulated) vs the GPU backends that run
#   bench-cuda/, bench-cuda-graphs/      Table 7 on ONNX Runtime CUDA, fp16, CUDA events, without and with CUDA graphs
#
# Environment: PY (default python3), BATCH_SIZES (1,8,32), ITERS (200). A step that cannot run says why and the
# script goes on; the exit status is 0 when every step that ran passed.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RESULTS=${1:?usage: scripts/gpu_checks.sh RESULTS [MODEL SENTENCES]}
MODEL=${2:-}
SENTENCES=${3:-}
PY=${PY:-python3}
BATCH_SIZES=${BATCH_SIZES:-1,8,32}
ITERS=${ITERS:-200}
if [[ -n "$MODEL" && -z "$SENTENCES" ]]; then
    echo "gpu_checks: MODEL needs SENTENCES too (a file, one sentence per line)" >&2
    exit 2
fi
mkdir -p "$RESULTS" || exit 2
RESULTS="$(cd "$RESULTS" && pwd)"
cd "$ROOT" || exit 2
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$ROOT" PYTHONUNBUFFERED=1
# the CUDA libraries of NVIDIA's pip packages (onnxruntime-gpu looks for them on the loader's path)
NV_LIBS=$("$PY" -c '
import glob, os, sys
print(":".join(sorted({d for p in sys.path if p for d in glob.glob(os.path.join(p, "nvidia", "**", "lib"), recursive=True)})))')
export LD_LIBRARY_PATH="${NV_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
LEAP=("$PY" -m leap_export)
failed=0

note() { echo "$*" | tee -a "$RESULTS/summary.txt"; }

step() {  # step NAME LOG CMD...: run CMD with its output in LOG, and note its status and time
    local name=$1 log=$2 t0 rc
    shift 2
    echo "[$(date -u +%H:%M:%S)] $name ..."
    t0=$(date +%s)
    "$@" >"$log" 2>&1
    rc=$?
    note "$name: exit $rc, $(($(date +%s) - t0)) s"
    if ((rc != 0)); then
        failed=1
        tail -n 15 "$log"
    fi
    return $rc
}

: >"$RESULTS/summary.txt"
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv 2>&1 || true
    "$PY" - <<'EOF'
import importlib
import platform

print("python", platform.python_version(), "on", platform.machine())
for name in ("numpy", "torch", "cupy", "onnx", "onnxruntime", "tensorrt", "transformers", "tokenizers"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"))
    except Exception as e:  # noqa: BLE001 - a report of what is there
        print(name, "not importable:", type(e).__name__, str(e).splitlines()[0] if str(e) else "")
try:
    import onnxruntime

    print("onnxruntime providers:", ", ".join(onnxruntime.get_available_providers()))
except Exception:  # noqa: BLE001
    pass
from trt_runtime.backends import backend_class

for backend in ("tensorrt", "onnxruntime-cuda"):
    print(f"{backend}:", backend_class(backend).unavailable() or "can run here")
EOF
} >"$RESULTS/env.txt" 2>&1
cat "$RESULTS/env.txt"

step "tests marked gpu" "$RESULTS/tests.log" "$PY" -m pytest -m gpu -rs -p no:cacheprovider tests/trt_runtime
grep -E "passed|failed|skipped|error" "$RESULTS/tests.log" | tail -n 1 | tee -a "$RESULTS/summary.txt"

if [[ -n "$MODEL" ]]; then
    ART="$RESULTS/art"
    if step "build fp32" "$RESULTS/build.log" "${LEAP[@]}" build "$MODEL" --out "$ART" --exits on --force --no-progress &&
        step "build fp16" "$RESULTS/build-fp16.log" "${LEAP[@]}" build "$ART" --out "$ART" --precision fp16 --no-progress; then
        step "verify fp16 (every backend that runs)" "$RESULTS/verify-fp16.txt" "${LEAP[@]}" verify "$ART" \
            --variant fp16 --sentences "$SENTENCES" --report "$RESULTS/verify-fp16.json" --no-progress
        cuda=$("$PY" -c 'from trt_runtime.backends import backend_class; print(backend_class("onnxruntime-cuda").unavailable() or "")')
        if [[ -z "$cuda" ]]; then
            for graphs in "" "--cuda-graphs"; do
                step "bench onnxruntime-cuda fp16 ${graphs:-(no CUDA graphs)}" "$RESULTS/bench-cuda${graphs:+-graphs}.log" \
                    "${LEAP[@]}" bench "$ART" --variant fp16 --backend onnxruntime-cuda $graphs --no-baselines \
                    --sentences "$SENTENCES" --batch-sizes "$BATCH_SIZES" --iters "$ITERS" --no-progress \
                    --out "$RESULTS/bench-cuda${graphs:+-graphs}"
                cat "$RESULTS/bench-cuda${graphs:+-graphs}/bench.md" 2>/dev/null
            done
        else
            note "bench onnxruntime-cuda: not run: $cuda"
        fi
    fi
fi
echo "--- summary ($RESULTS/summary.txt)"
cat "$RESULTS/summary.txt"
exit $failed
