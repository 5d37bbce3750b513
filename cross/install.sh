#!/usr/bin/env bash
# Install an unpacked dlm package (made by cross/package.sh) on the target box, as root:
#   tar xzf dlm-<version>-aarch64-linux.tar.gz && sudo ./dlm-<version>-aarch64-linux/install.sh
# Copies it to $PREFIX (default /opt/dlm), installs the systemd unit, starts it and waits for
# it to answer a health request. ORT_LIB=/path/to/libonnxruntime.so uses another ONNX Runtime
# (JetPack's CUDA/TensorRT build) instead of the bundled CPU one.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
prefix="${PREFIX:-/opt/dlm}"
unit=/etc/systemd/system/dlm.service

[[ $EUID -eq 0 ]] || { echo "install.sh: run as root (sudo)" >&2; exit 1; }
[[ -x "$here/bin/dlm" ]] || { echo "install.sh: $here/bin/dlm missing; run from an unpacked package" >&2; exit 1; }
command -v systemctl >/dev/null || { echo "install.sh: systemd not found" >&2; exit 1; }

arch="$(uname -m)"
bin_arch="$(od -An -t x1 -j 18 -N 2 "$here/bin/dlm" | tr -d ' ')"   # ELF e_machine: b700 = aarch64, 3e00 = x86-64
case "$arch/$bin_arch" in
  aarch64/b700|x86_64/3e00) ;;
  *) echo "install.sh: this package's dlm (e_machine $bin_arch) does not match this machine ($arch)" >&2; exit 1 ;;
esac

install -d -m 0755 "$prefix" "$prefix/bin" "$prefix/lib" "$prefix/models"
install -m 0755 "$here/bin/dlm" "$prefix/bin/dlm"
cp -a "$here/lib/." "$prefix/lib/"
rm -rf "$prefix/models/e2e"
cp -a "$here/models/e2e" "$prefix/models/e2e"
chmod -R a+rX,go-w "$prefix"
[[ -f "$here/README.md" ]] && install -m 0644 "$here/README.md" "$prefix/README.md"

# Users in dlm-clients may connect to the Unix socket (the unit runs with Group=dlm-clients, UMask=0007).
getent group dlm-clients >/dev/null || groupadd --system dlm-clients

sed "s#/opt/dlm#$prefix#g" "$here/dlm.service" > "$unit"   # a PREFIX other than /opt/dlm
chmod 0644 "$unit"
# Settings: /etc/default/dlm is the administrator's (kept when it exists); ORT_LIB sets its library.
defaults=/etc/default/dlm
[[ -f "$defaults" ]] || sed "s#/opt/dlm#$prefix#g" "$here/dlm.default" > "$defaults"
if [[ -n "${ORT_LIB:-}" ]]; then
  { grep -v '^ORT_DYLIB_PATH=' "$defaults"; echo "ORT_DYLIB_PATH=$ORT_LIB"; } > "$defaults.new" && mv "$defaults.new" "$defaults"
fi
chmod 0644 "$defaults"

# Check the model and the library before handing it to systemd, with the service's settings.
(set -a; . "$defaults"; "$prefix/bin/dlm" info --model "${DLM_MODEL:-$prefix/models/e2e}" >/dev/null)

systemctl daemon-reload
systemctl enable dlm.service
systemctl restart dlm.service
echo "dlm.service: $(systemctl is-active dlm.service)"
echo "try: curl -s localhost:8080/health  or  echo '{\"id\":1,\"steps\":50}' | socat - UNIX-CONNECT:/run/dlm/dlm.sock"
