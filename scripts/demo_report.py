"""Print the short report at the end of `make demo`: what was built, parity, and where samples exited."""

import json
import sys
from pathlib import Path

import numpy as np

out = Path(sys.argv[1] if len(sys.argv) > 1 else "demo-out")
missing = [
    name for name in ("verify.json", "exit_layers.json", "embeddings.npy") if not (out / name).is_file()
]
if missing:
    sys.exit(f"{out} lacks {', '.join(missing)}: pass the folder `make demo` wrote (default demo-out)")
verify = json.loads((out / "verify.json").read_text())
exits = json.loads((out / "exit_layers.json").read_text())
emb = np.load(out / "embeddings.npy")
import leap_export  # noqa: E402
from leap_export.textio import read_lines  # noqa: E402

sentences = read_lines(
    Path(leap_export.__file__).parent / "resources" / "sample_sentences.txt"
)  # what make demo encoded
stats = exits["stats"]
print("\n== leap-export demo ==")
print(f"artifacts      {out / 'minilm-l6'} (inspect with: leap-export inspect {out / 'minilm-l6'})")
print(
    f"parity         {'PASSED' if verify['passed'] else 'FAILED'}: {len(verify['checks'])} checks "
    f"(PyTorch vs ONNX Runtime per segment, end to end, exits, compaction)"
)
print(f"embeddings     {emb.shape[0]} x {emb.shape[1]} -> {out / 'embeddings.npy'}")
print(
    f"exit policy    theta {exits['policy']['theta']}, k {exits['policy']['patience']}, "
    f"min layer {exits['policy']['min_layer']}, exits {'on' if exits['policy']['enabled'] else 'OFF'}"
)
check = json.loads((out / "minilm-l6" / "manifest.json").read_text()).get("exit_check")
if check is not None:
    print(f"exit check     {'passed' if check['passed'] else 'FAILED'}: {check['reason']}")
print(
    "exit layers    "
    + ", ".join(f"L{k}: {v}" for k, v in stats["exit_counts"].items())
    + f"   E[layers] {stats['expected_layers']:.2f}"
)
print("mean score     " + ", ".join(f"L{k}: {v:.3f}" for k, v in stats["mean_score"].items()))
sims = emb @ emb.T
np.fill_diagonal(sims, -1)
i, j = np.unravel_index(np.argmax(sims), sims.shape)
print(f"closest pair   {sims[i, j]:.3f}: {sentences[i]!r} ~ {sentences[j]!r}")
if exits["policy"]["enabled"] and all(v == 0 for k, v in stats["exit_counts"].items() if int(k) < 6):
    print(
        "note           the stock all-MiniLM-L6-v2 exited no sentence early (as the LEAP paper predicts);\n"
        "               train it with `leap-export train` (LEAP) to make early exit pay off."
    )
