#!/usr/bin/env bash
# System packages the tests use, on Debian 12 as root. Without root or apt-get this only
# reports what is missing: the tests that need these skip with the reason.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# clang, llvm, bpftool, libbpf-dev: `make` builds the rmdir probe (collectors/bpf); libbpf1 loads it.
pkgs=(runc busybox-static iproute2 prometheus procps clang llvm bpftool libbpf-dev libbpf1)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
            || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
    else
        echo "not root or no apt-get: missing ${missing[*]}; tests needing them will skip"
    fi
fi
# Debian's prometheus package starts a service on :9090 where an init system runs; tests start
# their own Prometheus on other loopback ports, so the packaged one is left as it is.
for extra in "$here"/install-*.sh; do
    [ "$extra" = "$here/install-system.sh" ] && continue
    [ -e "$extra" ] || continue
    bash "$extra"
done
