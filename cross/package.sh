#!/usr/bin/env bash
# Build dlm for aarch64 Linux and pack what an edge box needs into one tarball:
#   bin/dlm, lib/libonnxruntime.so.<ver> (CPU build from PyPI's manylinux aarch64 wheel),
#   models/e2e (runtime files only), dlm.service, dlm.default, install.sh, README.md.
#
#   cross/package.sh                 # builds with cross (needs Docker or Podman)
#   BUILD=cargo cross/package.sh     # builds with cargo (needs gcc-aarch64-linux-gnu, see .cargo/config.toml)
#   FEATURES=cuda,tensorrt cross/package.sh   # GPU providers; then use JetPack's ONNX Runtime (ORT_LIB in install.sh)
#
# Output: dist/dlm-<version>-aarch64-linux.tar.gz
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target=aarch64-unknown-linux-gnu
ort_version="$(sed -n 's/^onnxruntime==//p' export/requirements.txt)"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
name="dlm-$version-aarch64-linux"
features=()
[[ -n "${FEATURES:-}" ]] && features=(--features "$FEATURES")

case "${BUILD:-cross}" in
  cross) CROSS_CONFIG=cross/Cross.toml cross build --target "$target" --release "${features[@]}" ;;
  cargo) cargo build --target "$target" --release "${features[@]}" ;;
  *) echo "package.sh: BUILD must be cross or cargo" >&2; exit 1 ;;
esac
binary="target/$target/release/dlm"
file "$binary" | grep -q "ARM aarch64" || { echo "package.sh: $binary is not an aarch64 binary" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
pip="${PIP:-$root/.venv/bin/pip}"
[[ -x "$pip" ]] || pip=pip3
"$pip" download --quiet --no-deps --only-binary=:all: --platform manylinux_2_28_aarch64 \
  --python-version 3.11 --dest "$work/wheel" "onnxruntime==$ort_version"
unzip -q -o "$work"/wheel/onnxruntime-*.whl "onnxruntime/capi/libonnxruntime.so.$ort_version" -d "$work/wheel"

pkg="$work/$name"
mkdir -p "$pkg/bin" "$pkg/lib" "$pkg/models/e2e" dist
cp "$binary" "$pkg/bin/dlm"
cp "$work/wheel/onnxruntime/capi/libonnxruntime.so.$ort_version" "$pkg/lib/"
# The runtime reads the manifest, the tokenizer, the embeddings and the ONNX graphs; the
# PyTorch checkpoints (*.pt) stay behind.
for f in models/e2e/*; do
  case "$f" in *.pt) ;; *) cp "$f" "$pkg/models/e2e/" ;; esac
done
cp cross/dlm.service cross/dlm.default cross/install.sh README.md "$pkg/"
sed -i "s#libonnxruntime.so.1.32.0#libonnxruntime.so.$ort_version#" "$pkg/dlm.service" "$pkg/dlm.default"
tar -C "$work" -czf "dist/$name.tar.gz" "$name"
echo "dist/$name.tar.gz: $(du -h "dist/$name.tar.gz" | cut -f1)"
