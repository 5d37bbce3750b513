#!/usr/bin/env bash
# Run the arm64 Debian package under user-mode emulation on an x86-64 Linux host (no board needed):
#   sudo apt install qemu-user-static gcc-aarch64-linux-gnu   # libc and libstdc++ for aarch64
#   ARCH=arm64 cross/package.sh && sudo cross/qemu-smoke.sh dist/dlm_*_arm64.deb
# ONNX Runtime's CPU detection (cpuinfo) reads /proc/cpuinfo and crashes on an x86 one, so this
# bind-mounts an aarch64 /proc/cpuinfo in a private mount namespace (hence root).
set -euo pipefail
deb="${1:?usage: qemu-smoke.sh dlm_<version>_arm64.deb}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$deb" "$work/root"
pkg="$work/root/opt/dlm"
for i in 0 1; do
  printf 'processor\t: %d\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n' "$i"
done > "$work/cpuinfo"
export QEMU_LD_PREFIX="${QEMU_LD_PREFIX:-/usr/aarch64-linux-gnu}" ORT_DYLIB_PATH="$(echo "$pkg"/lib/libonnxruntime.so.*)"
unshare -m bash -euo pipefail -c '
  mount --bind "$1/cpuinfo" /proc/cpuinfo
  cd "$2"
  qemu-aarch64-static bin/dlm generate --model models/e2e --steps 20 --num 2
  qemu-aarch64-static bin/dlm generate --model models/e2e --steps 20 --precision fp16 --pos "PROPN AUX DET ADJ NOUN PUNCT"
  printf "{\"id\":1,\"steps\":10,\"content\":\"food=Italian\"}\n{\"op\":\"health\",\"id\":2}\n" | qemu-aarch64-static bin/dlm serve --stdio --model models/e2e
' _ "$work" "$pkg"
