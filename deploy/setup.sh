#!/usr/bin/env bash
# Idempotent set-up for smgeo on Debian 12: system packages, the pinned libtorch
# (PyPI wheel, CPU layout) and nothing else. Fast when everything is present.
#   deploy/setup.sh            # apt packages + libtorch
#   SMGEO_SKIP_APT=1 deploy/setup.sh   # libtorch only
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS=(libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-tools
  libgstrtspserver-1.0-dev gstreamer1.0-rtsp
  libgdal-dev gdal-bin mosquitto mosquitto-clients pkg-config libclang-dev)

log() { printf '[setup] %s\n' "$*" >&2; }

install_apt() {
  [ "${SMGEO_SKIP_APT:-0}" = 1 ] && return 0
  local missing=()
  for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then log "apt packages present"; return 0; fi
  log "installing apt packages: ${missing[*]}"
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

TORCH_VERSION=2.11.0
install_libtorch() {
  local dir=.libtorch
  if [ -f "$dir/torch/lib/libtorch_cpu.so" ] && [ -f "$dir/torch/build-version" ]; then
    log "libtorch $(cat $dir/torch/build-version) present"; return 0
  fi
  log "installing libtorch $TORCH_VERSION (PyPI wheel, lean layout) into $dir"
  rm -rf "$dir"
  python3 -m pip install -q --disable-pip-version-check --no-deps --target "$dir" \
    "torch==$TORCH_VERSION" nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
  # prune what a C++ link does not need (python bindings, tests, bundled binaries)
  rm -rf "$dir"/torch/{_inductor,_dynamo,testing,utils/benchmark,bin,distributed} "$dir"/bin 2>/dev/null || true
  echo "${TORCH_VERSION}+cu130" > "$dir/torch/build-version"
}

install_apt
install_libtorch
log "done"
