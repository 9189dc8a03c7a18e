#!/usr/bin/env bash
# Packs what scripts/gpu_checks.sh needs on a GPU machine that cannot reach PyPI into parts small enough to
# carry one per call (docs/gpu.md, "Running the GPU checks"): the onnxruntime-gpu wheel for that machine's
# Python, MODEL (its weights, config and tokenizer; no checkpoint or logs) and SENTENCES.
#
#   scripts/gpu_bundle.sh MODEL SENTENCES [DEST]     # DEST (default .gpu, ignored by git): part.00, part.01, ...
#
# Environment: ORT_GPU (onnxruntime-gpu version, default 1.31.1: built for CUDA 13), PYVER (3.12), PART (56M,
# so a part plus this repository stays within a call's 64 MiB).
set -euo pipefail
MODEL=${1:?usage: scripts/gpu_bundle.sh MODEL SENTENCES [DEST]}
SENTENCES=${2:?usage: scripts/gpu_bundle.sh MODEL SENTENCES [DEST]}
DEST=${3:-.gpu}
ORT_GPU=${ORT_GPU:-1.31.1}
PYVER=${PYVER:-3.12}
PART=${PART:-56M}
PY=${PY:-python3}
[[ -f "$MODEL/config.json" ]] || { echo "gpu_bundle: $MODEL is not a model folder (no config.json)" >&2; exit 2; }
[[ -s "$SENTENCES" ]] || { echo "gpu_bundle: $SENTENCES is missing or empty" >&2; exit 2; }
if [[ -e "$DEST" && -n "$(ls -A "$DEST")" ]]; then
    echo "gpu_bundle: $DEST is not empty; remove it or name another DEST" >&2
    exit 2
fi
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bundle/model" "$DEST"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    -d "$stage/bundle" "onnxruntime-gpu==$ORT_GPU"
(cd "$MODEL" && find . -path ./checkpoint -prune -o -type f ! -name 'loss_log.jsonl' -print0 |
    xargs -0 cp --parents -t "$stage/bundle/model")
cp "$SENTENCES" "$stage/bundle/sentences.txt"
tar -C "$stage" -cf - bundle | split -b "$PART" -d - "$DEST/part."
ls -l "$DEST"
echo "carry each of $DEST/part.* in its own call, in order; docs/gpu.md gives the commands"
