#!/usr/bin/env bash
# The Debian package of dlm, built with cargo-deb from the metadata in Cargo.toml, for this
# machine (amd64) or for arm64 boards:
#   cross/package.sh                          # this machine's (amd64): dist/dlm_<version>-1_amd64.deb
#   ARCH=arm64 cross/package.sh               # arm64, with Debian's gcc-aarch64-linux-gnu (.cargo/config.toml)
#   ARCH=arm64 BUILD=cross cross/package.sh   # arm64, with cross (Docker or Podman)
#   BUILD=none cross/package.sh               # package the binary already built
#   FEATURES=... cross/package.sh              # cargo features beyond the default ones
# The CUDA and TensorRT providers are built in by default (Rust code only, with ort's
# load-dynamic): point ORT_DYLIB_PATH in /etc/default/dlm at a GPU build of ONNX Runtime
# (JetPack's) to use them, docs/deploy.md#jetson.
# It puts the CPU ONNX Runtime library of that architecture (PyPI's onnxruntime wheel, through
# scripts/fetch_ort.py) beside the binary, where Cargo.toml's assets take it (installed as
# /opt/dlm/lib, where the binary finds it); cargo-deb moves target/release/ paths to
# target/<triple>/release/ for another architecture.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
ort="libonnxruntime.so.$(sed -n 's/^VERSION = "\(.*\)".*/\1/p' scripts/fetch_ort.py)"
features=()
[[ -n "${FEATURES:-}" ]] && features=(--features "$FEATURES")
host="$(dpkg --print-architecture 2>/dev/null || echo amd64)"
ARCH="${ARCH:-$host}"   # default: this machine's
case "$ARCH" in
  amd64) target=x86_64-unknown-linux-gnu platform=manylinux_2_27_x86_64 release=target/release target_arg=() ;;
  arm64) target=aarch64-unknown-linux-gnu platform=manylinux_2_28_aarch64 release=target/$target/release target_arg=(--target "$target") ;;
  *) echo "package.sh: ARCH must be amd64 or arm64, not ${ARCH}" >&2; exit 1 ;;
esac

case "${BUILD:-cargo}" in
  cargo) cargo build --release "${target_arg[@]}" "${features[@]}" ;;
  cross) CROSS_CONFIG=cross/Cross.toml cross build --release --target "$target" "${features[@]}" ;;
  none) ;;
  *) echo "package.sh: BUILD must be cargo, cross or none, not ${BUILD}" >&2; exit 1 ;;
esac
[[ -x "$release/dlm" ]] || { echo "package.sh: no $release/dlm; build it (BUILD=cargo or cross)" >&2; exit 1; }

if [[ ! -f "$release/$ort" ]]; then
  if [[ "$ARCH" == "$host" && -f ".ort/$ort" ]]; then
    cp ".ort/$ort" "$release/"
  else
    python3 scripts/fetch_ort.py "$release" --platform "$platform"
  fi
fi
mkdir -p "${OUT:-dist}"
cargo deb --no-build --strip "${target_arg[@]}" --output "${OUT:-dist}"
