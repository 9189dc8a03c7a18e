#!/usr/bin/env bash
# `make demo-leap`: what LEAP buys, end to end on this machine (about 20 to 30 minutes on 2 cores).
#
#   scripts/demo_leap.sh [OUT]        # default OUT: demo-leap
#
# Trains the LEAP recipe (scripts/train_minilm.sh) into OUT/minilm-leap, builds it and the stock
# all-MiniLM-L6-v2, verifies the LEAP build, calibrates its threshold on Lee and the Bible within the 2 %
# budget (written into OUT/leap's manifest), evaluates it against the stock model at full depth, benches it
# at batch 1 and 32 next to sentence-transformers, and prints the speedup and the quality side by side.
# The training corpus is cached under runs/ and reused; rerun after an interruption to continue.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-demo-leap}
LX=("$PY" -m leap_export.cli)
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"

echo "== 1/6 train the LEAP recipe -> $OUT/minilm-leap"
OUT="$OUT/minilm-leap" PY="$PY" bash scripts/train_minilm.sh
head -n 1000 runs/corpus-fw/test.txt > "$OUT/heldout.txt"  # held out from training: the corpus' test split

echo "== 2/6 build the LEAP model and the stock model"
"${LX[@]}" build "$OUT/minilm-leap" --out "$OUT/leap" --force --no-progress
"${LX[@]}" build minilm-l6 --out "$OUT/stock" --force --no-progress

echo "== 3/6 verify the LEAP build (PyTorch against ONNX Runtime, and exit quality)"
"${LX[@]}" verify "$OUT/leap" --report "$OUT/verify.json" --no-progress

echo "== 4/6 calibrate theta within the budget (NN@10 >= 0.80, Lee and Bible within 2 % of full depth)"
"${LX[@]}" calibrate "$OUT/leap" --eval lee,bible --bible-corpus-limit 5000 --sentences "$OUT/heldout.txt" \
  --report "$OUT/calibrate.json" --no-progress

echo "== 5/6 evaluate at the calibrated theta, against the stock model at full depth"
"${LX[@]}" evaluate "$OUT/leap" --eval lee,bible --bible-corpus-limit 5000 --compare "$OUT/stock" \
  --sentences "$OUT/heldout.txt" --report "$OUT/evaluate.json" --no-progress

echo "== 6/6 bench at batch 1 and 32 (early exit, the full graph, sentence-transformers)"
"${LX[@]}" bench "$OUT/leap" --sentences "$OUT/heldout.txt" --batch-sizes 1,32 --out "$OUT/bench" --no-progress

"$PY" scripts/demo_leap_report.py "$OUT"
