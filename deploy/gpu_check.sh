#!/usr/bin/env bash
# The prepared device check, run ON the GPU machine from the repo root with .gpu/ carried
# (build it here first: deploy/gpu_build.sh). Everything it measures lands in $OUT:
#   gpu_check.log       the whole log
#   golden_cuda.jsonl   every golden tensor of the release preset on CUDA vs the official code
#   bench_model_{f32,bf16,f16}.json   forward latency, both presets, CVOGL sizes, batch 1
#   bench_model_bf16_b8.json          the same at batch 8 (throughput)
#   bench_model_bf16_all.json         bf16 with every stage reduced (--f32-stages 0; default keeps stage 0 float32)
#   bench_train_{f32,bf16}.json       training step throughput and memory, paper preset, batch 8
#   bench_train_synth_q16.json        the synthetic benchmark's config: 8 chips × 16 prompts per step
#   train.json / eval.json   a short fresh-sample training (bf16 mixed precision) of the synthetic benchmark
#   precision_{bf16,f16}.json         the trained model in bf16/f16 vs float32 on the test split
# Budget: about 8 minutes; TRAIN_MIN (default 3) sets the training part. Knobs for a smoke
# run on a CPU machine: DEV=cpu BIN=target/release/smgeo RUNS=1 TRAIN_BATCH=1 N_TRAIN=40 TRAIN_MIN=1
set -uo pipefail
OUT=${OUT:-/tmp/smgeo-gpu}
mkdir -p "$OUT"
log=$OUT/gpu_check.log
tl=$(python3 -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null)
export LD_LIBRARY_PATH="$tl:${LD_LIBRARY_PATH:-}"
bin=${BIN:-.gpu/smgeo}
DEV=${DEV:-cuda}   # DEV=cpu BIN=target/release/smgeo: a smoke run of this script on a CPU machine
g=tests/fixtures/golden
step() { echo "### $(date +%T) $*" | tee -a "$log"; }
step "machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; $bin info; } 2>&1 | tee -a "$log"
step "golden parity on CUDA (release preset, tiny config)"
$bin weights forward --config $g/tiny_config.json --weights $g/tiny_weights.safetensors \
  --inputs $g/tiny_io.safetensors --out "$OUT/tiny_cuda.safetensors" --device "$DEV" 2>&1 | tee -a "$log"
python3 deploy/compare_safetensors.py $g/tiny_io.safetensors "$OUT/tiny_cuda.safetensors" \
  > "$OUT/golden_cuda.jsonl" 2>> "$log"; tail -n 1 "$OUT/golden_cuda.jsonl" | tee -a "$log"
rm -f "$OUT/tiny_cuda.safetensors"
step "bench model"
for p in f32 bf16 f16; do
  timeout 120 $bin bench model --device "$DEV" --runs "${RUNS:-20}" --warmup 3 --precision $p > "$OUT/bench_model_$p.json" 2>> "$log"
done
timeout 120 $bin bench model --device "$DEV" --runs "${RUNS:-20}" --warmup 3 --precision bf16 --batch 8 > "$OUT/bench_model_bf16_b8.json" 2>> "$log"
timeout 120 $bin bench model --device "$DEV" --runs "${RUNS:-20}" --warmup 3 --precision bf16 --f32-stages 0 > "$OUT/bench_model_bf16_all.json" 2>> "$log"
step "bench train"
for p in f32 bf16; do
  timeout 120 $bin bench train --device "$DEV" --batch "${TRAIN_BATCH:-8}" --steps 5 --warmup 2 --precision $p > "$OUT/bench_train_$p.json" 2>> "$log"
done
timeout 120 $bin bench train --device "$DEV" --config config/bench_synth.toml --batch "${TRAIN_BATCH:-8}" --queries-per-chip 16 \
  --steps 5 --warmup 2 > "$OUT/bench_train_synth_q16.json" 2>> "$log"
step "fresh-sample training of the synthetic benchmark"
d=/tmp/smgeo-data
$bin synth cvogl --out $d --n-train "${N_TRAIN:-400}" --n-val 60 --n-test 150 --seed 7 --threads "$(nproc)" > /dev/null 2>> "$log"
timeout $(( ${TRAIN_MIN:-3} * 60 + 90 )) $bin train --config config/bench_synth.toml --data $d --out /tmp/smgeo-run \
  --device "$DEV" --fresh-samples --loader-threads $(( $(nproc) - 2 )) --max-minutes "${TRAIN_MIN:-3}" --quiet \
  > "$OUT/train.json" 2>> "$log"
timeout 120 $bin eval --weights /tmp/smgeo-run/best --data $d --split test --device "$DEV" --examples 0 \
  --out /tmp/smgeo-eval > "$OUT/eval.json" 2>> "$log"
cp /tmp/smgeo-run/last/state.json "$OUT/train_state.json" 2>/dev/null
step "reduced precision vs float32 on the trained model"
for p in bf16 f16; do
  timeout 90 $bin bench precision --weights /tmp/smgeo-run/best --data $d --split test --device "$DEV" --precision $p \
    > "$OUT/precision_$p.json" 2>> "$log"
done
step "done"
