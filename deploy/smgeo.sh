#!/usr/bin/env bash
# The two entry points of the README, each doing its own set-up (idempotent):
#   deploy/smgeo.sh demo [ARGS…]   install what is missing, build, run the main job
#   deploy/smgeo.sh test           install what is missing, build, run the whole test suite
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH:/usr/sbin:/sbin"
command -v cargo >/dev/null || { echo "cargo not found: install Rust 1.95 (rustup) first" >&2; exit 1; }
bash deploy/setup.sh

verb="${1:-}"; shift || true
case "$verb" in
  test)
    cargo build --release --locked --bins
    # the model-only build (no GStreamer, no GDAL) that GPU machines run must keep compiling
    cargo check --release --locked --no-default-features --bins --target-dir target/model-only
    cargo test --release --locked -- --test-threads 2 "$@"
    ;;
  demo)
    cargo build --release --locked --bins
    exec bash deploy/demo.sh "$@"
    ;;
  *)
    echo "usage: deploy/smgeo.sh demo|test" >&2; exit 2 ;;
esac
