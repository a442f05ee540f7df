#!/usr/bin/env bash
# The synthetic CVOGL benchmark table (README): the prompt-aware `paper` preset vs the
# query-blind `release` preset, same small configuration (config/bench_synth.toml) and
# the same training-time budget each, evaluated on the unseen test world, plus the
# trivial centre-box baseline. Usage: deploy/synth_benchmark.sh [DATA_DIR] [RUNS_DIR]
# Data: 6,000 training prompts on 1,500 chips (4 per chip, different objects of a chip,
# mostly of one category: only the prompt tells which is meant), 60 validation and 150
# test prompts from other worlds. Needs a release build (deploy/smgeo.sh does it).
# ~55 min on 2 cores (10 of them writing the data, once).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/smgeo
data=${1:-.cache/bench/synth8q4v}
runs=${2:-runs/synth_benchmark}
minutes=${SMGEO_BENCH_MINUTES:-20}
mkdir -p "$runs"
[ -f "$data/manifest.json" ] || $bin synth cvogl --out "$data" --n-train 6000 --n-val 60 --n-test 150 --seed 8 --queries-per-chip 4 > /dev/null
for p in paper release; do
  $bin train --config config/bench_synth.toml --model-preset "$p" --max-minutes "$minutes" \
    --data "$data" --out "$runs/$p" --quiet > "$runs/$p.train.json"
  $bin eval --weights "$runs/$p/best" --data "$data" --split test --out "$runs/$p/eval" > "$runs/$p.eval.json"
done
$bin eval --baseline --data "$data" --split test --out "$runs/baseline" > "$runs/baseline.eval.json"
python3 - "$runs" <<'PY'
import json, sys
runs = sys.argv[1]
rows = []
for name in ["paper", "release", "baseline"]:
    e = json.load(open(f"{runs}/{name}.eval.json"))["overall"]
    t = json.load(open(f"{runs}/{name}.train.json")) if name != "baseline" else {}
    p = e["pixel_iou"]
    ps = json.load(open(f"{runs}/{name}.eval.json")).get("prompt_split")
    split = f"{100*ps['split']:.1f}" if ps else "–"
    rows.append(f"| {name} | {100*p['acc_at_0_25']:.1f} | {100*p['acc_at_0_5']:.1f} | {100*p['miou']:.1f} | "
                f"{100*e['accu_c']:.1f} | {split} | {t.get('steps', '–')} | {t.get('train_minutes', 0):.1f} | "
                f"{t.get('samples_per_s', 0):.2f} | {t.get('chips_per_s', 0):.2f} |")
table = ("| model | acc@0.25 | acc@0.5 | mIoU | centre-cell | prompt split | steps | train min | prompts/s | chips/s |\n"
         "|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows))
open(f"{runs}/table.md", "w").write(table + "\n")
print(table)
PY
