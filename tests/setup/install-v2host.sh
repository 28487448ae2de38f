#!/usr/bin/env bash
# What `make test-v2` needs on the host (Debian 12, as root): qemu (TCG emulation), mmdebstrap
# (the guest's root filesystem), e2fsprogs (mkfs.ext4 -d, debugfs). The guest's kernel comes
# from its own linux-image-amd64 package (tests/v2host/packages.txt), not from the host.
set -euo pipefail
pkgs=(qemu-system-x86 mmdebstrap e2fsprogs)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "not root or no apt-get: missing ${missing[*]} (make test-v2 needs them)"
    exit 0
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
    || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
