#!/usr/bin/env bash
# The synthetic CVOGL benchmark table (README): the prompt-aware `paper` preset vs the
# query-blind `release` preset, same small configuration (config/bench_synth.toml) and
# the same training-time budget each, evaluated on the unseen test world, plus the
# trivial centre-box baseline. Usage: deploy/synth_benchmark.sh [DATA_DIR] [RUNS_DIR]
# Data: 8,000 training prompts on 500 chips (16 per chip, different objects of a chip,
# mostly of one category: only the prompt tells which is meant), 512 validation and 1,600
# test prompts (32 and 100 chips) from other worlds (prompts of a chip are correlated, so
# the chip count sets the spread of the result); chips at 0.15–0.3 m/px, where targets
# fill their chips more as CVOGL's do (config/sample_bench.toml). Needs a release build
# (deploy/smgeo.sh does it). ~55 min on 2 cores (7 of them writing the data, once).
# Precision: `auto` — training in bf16 mixed precision where the CPU has AVX512-BF16
# (1.4× faster there), float32 elsewhere (bf16 is a scalar fallback without it); `eval`
# in float32 on CPU. SMGEO_BENCH_PRECISION overrides both.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/smgeo
data=${1:-.cache/bench/fine9q16t1600}
runs=${2:-runs/synth_benchmark}
minutes=${SMGEO_BENCH_MINUTES:-20}
# The cosine schedule's length: 6 epochs fill 20 minutes here; scale it with the budget
# (e.g. SMGEO_BENCH_MINUTES=48 SMGEO_BENCH_EPOCHS=12, docs/BENCHMARKS.md).
epochs=${SMGEO_BENCH_EPOCHS:-6}
mkdir -p "$runs"
precision=${SMGEO_BENCH_PRECISION:-auto}
[ -f "$data/manifest.json" ] || $bin synth cvogl --out "$data" --n-train 8000 --n-val 512 --n-test 1600 --seed 9 --queries-per-chip 16 \
  --sample-config config/sample_bench.toml > /dev/null
for p in paper release; do
  $bin train --config config/bench_synth.toml --model-preset "$p" --max-minutes "$minutes" --epochs "$epochs" \
    --precision "$precision" --data "$data" --out "$runs/$p" --quiet > "$runs/$p.train.json"
  $bin eval --weights "$runs/$p/best" --data "$data" --split test --precision "$precision" --out "$runs/$p/eval" > "$runs/$p.eval.json"
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
