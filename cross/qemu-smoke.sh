#!/usr/bin/env bash
# Run the arm64 Debian package under user-mode emulation on an x86-64 Linux host (no board needed):
#   sudo apt install qemu-user-static gcc-aarch64-linux-gnu g++-aarch64-linux-gnu   # aarch64 libc, libstdc++
#   ARCH=arm64 cross/package.sh && sudo cross/qemu-smoke.sh dist/dlm_*_arm64.deb
# It runs the package's /usr/bin/dlm as installed: in a private mount namespace (hence root) the
# unpacked /opt/dlm is mounted at /opt/dlm, where the package's link points, with no
# ORT_DYLIB_PATH: dlm must find /opt/dlm/lib's ONNX Runtime itself. ONNX Runtime's CPU detection
# (cpuinfo) reads /proc/cpuinfo and crashes on an x86 one, so an aarch64 one is mounted over it.
# Nothing outside the namespace changes.
set -euo pipefail
deb="${1:?usage: qemu-smoke.sh dlm_<version>_arm64.deb}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$deb" "$work/root"
[[ "$(readlink "$work/root/usr/bin/dlm")" == /opt/dlm/bin/dlm ]] || { echo "qemu-smoke: usr/bin/dlm is not a link to /opt/dlm/bin/dlm" >&2; exit 1; }
for i in 0 1; do
  printf 'processor\t: %d\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n' "$i"
done > "$work/cpuinfo"
export QEMU_LD_PREFIX="${QEMU_LD_PREFIX:-/usr/aarch64-linux-gnu}"
unset ORT_DYLIB_PATH
unshare -m --propagation private bash -euo pipefail -c '
  mount --bind "$1/cpuinfo" /proc/cpuinfo
  mkdir -p /opt
  mount -t tmpfs tmpfs /opt
  mkdir /opt/dlm
  mount --bind "$1/root/opt/dlm" /opt/dlm
  root="$1/root"
  cd "$1"
  dlm() { qemu-aarch64-static "$root/usr/bin/dlm" "$@"; }
  info="$(dlm info --model /opt/dlm/models/e2e --device auto)"
  echo "$info" | grep -v "^  \(graph\|control\) \|^             parity"
  grep -q "providers built in: cpu cuda tensorrt" <<< "$info" || { echo "qemu-smoke: GPU providers not built in" >&2; exit 1; }
  grep -q "^onnxruntime  /opt/dlm/lib/libonnxruntime.so" <<< "$info" || { echo "qemu-smoke: not the packaged library" >&2; exit 1; }
  dlm generate --model /opt/dlm/models/e2e --steps 20 --num 2
  dlm generate --model /opt/dlm/models/e2e --steps 20 --precision fp16 --pos "PROPN AUX DET ADJ NOUN PUNCT"
  printf "{\"id\":1,\"steps\":10,\"content\":\"food=Italian\"}\n{\"op\":\"health\",\"id\":2}\n" | dlm serve --stdio --model /opt/dlm/models/e2e
' _ "$work"
echo "qemu-smoke: ok"
