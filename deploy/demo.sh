#!/usr/bin/env bash
# The main job: `smgeo demo` (README). Synthesises a scene mosaic and a drone flight,
# trains (or reuses) a small model on that scene, starts an in-process MQTT broker, runs
# the live pipeline on a loopback UDP stream of the flight, prompts objects and prints
# each published target with its error against the truth. Cached under .cache/demo.
set -euo pipefail
cd "$(dirname "$0")/.."
exec target/release/smgeo demo "$@"
