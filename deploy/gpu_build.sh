#!/usr/bin/env bash
# Build here what a GPU machine runs (ENVIRONMENT.md, "GPU machines"): the model-only
# binary (no GStreamer, no GDAL), stripped, in .gpu/ (git-ignored). Then, with the device
# tool: run  command="bash deploy/gpu_check.sh"  carry=[".gpu"]  timeout_s=540.
# The binary dlopens libtorch_cuda.so from the LD_LIBRARY_PATH that gpu_check.sh sets
# from that machine's PyTorch 2.11 (README, Devices).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
bash deploy/setup.sh
cargo build --release --locked --no-default-features --bin smgeo --target-dir target/model-only
mkdir -p .gpu
cp target/model-only/release/smgeo .gpu/smgeo
strip .gpu/smgeo
ls -l .gpu/smgeo
.gpu/smgeo info
