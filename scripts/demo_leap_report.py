"""Print the summary at the end of `make demo-leap` (scripts/demo_leap.sh): speed and quality, LEAP against
the stock model, from the reports that script wrote."""

import json
import sys
from pathlib import Path

out = Path(sys.argv[1] if len(sys.argv) > 1 else "demo-leap")
names = ("verify.json", "calibrate.json", "evaluate.json", "bench/bench.json", "minilm-leap/exit_eval.json")
missing = [n for n in names if not (out / n).is_file()]
if missing:
    sys.exit(
        f"{out} lacks {', '.join(missing)}: pass the folder scripts/demo_leap.sh wrote (default demo-leap)"
    )
verify, calibrate, evaluate, bench, trained = (json.loads((out / n).read_text()) for n in names)

chosen = calibrate.get("chosen")
print("\n== what LEAP buys: all-MiniLM-L6-v2, LEAP fine-tune against the stock model ==")
print(f"parity          {'PASSED' if verify['passed'] else 'FAILED'} ({len(verify['checks'])} checks)")
if chosen is None:
    print(f"calibrate       no theta within the budget: {calibrate['message']}")
else:
    print(
        f"calibrated      theta {chosen['theta']}: E[layers] {chosen['expected_layers']:.2f} of "
        f"{calibrate['num_layers']} ({chosen['speedup']:.2f}x fewer layers), NN@10 {chosen['nn_at_10']:.3f}"
    )
policy = evaluate["policy"]
print(
    f"policy used     theta {policy['theta']}, min layer {policy['min_layer']}, patience {policy['patience']}, "
    f"exits {'on' if policy.get('enabled', True) else 'OFF'}"
)
if not policy.get("enabled", True):
    print(
        "                the build failed its exit check (`leap-export inspect` says why), so it ships with exits "
        "off and every figure below is full depth"
    )
print("\nquality          stock, full depth   LEAP, full depth   LEAP, early exit   exit vs own full depth")
for m in evaluate["metrics"]:
    if m["primary"]:
        print(
            f"{m['set'] + ' ' + m['metric']:<16} {m['reference']:>17.3f} {m['full']:>18.3f} {m['exited']:>18.3f}"
            f" {-m['drop']:>+22.1%}"
        )
free = evaluate["label_free"]
print(
    f"held-out texts   {free['count']}: exited vs full depth cosine {free['mean_similarity']:.3f}, "
    f"NN@10 {free['nn_at_10']:.3f}, E[layers] {free['expected_layers']:.2f}"
)
print(
    "\nspeed (ms per batch)  full graph   early exit   speedup   sentence-transformers   ours end to end   vs ST"
)
for b, r in bench["results"].items():
    st = r.get("sentence-transformers")
    line = (
        f"batch {b:<15} {r['monolithic']['mean_ms']:>10.2f} {r['early exit']['mean_ms']:>12.2f} "
        f"{r['speedup']:>8.2f}x"
    )
    if st is not None:
        line += (
            f" {st['mean_ms']:>23.2f} {r['early exit (encode)']['mean_ms']:>17.2f}"
            f" {r['speedup_vs_sentence_transformers']:>6.2f}x"
        )
    print(line)
print(f"\nreports in {out}/: verify.json, calibrate.json, evaluate.json, bench/bench.md")
