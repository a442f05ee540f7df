#!/usr/bin/env bash
# The main job as far as it exists today (see README "Status"): the model stage.
# 1. which device libtorch uses; 2. the official code's golden inputs through our
# release preset (parity with PyTorch); 3. forward latency of both presets at CVOGL sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/smgeo
out=.cache/demo; mkdir -p "$out"
$bin info
$bin weights forward --config tests/fixtures/golden/tiny_config.json \
  --weights tests/fixtures/golden/tiny_weights.safetensors \
  --inputs tests/fixtures/golden/tiny_io.safetensors --out "$out/tiny_out.safetensors"
$bin weights inspect "$out/tiny_out.safetensors" | head -20
$bin bench model --runs "${SMGEO_DEMO_RUNS:-2}" "$@"
