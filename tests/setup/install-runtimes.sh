#!/usr/bin/env bash
# Container runtimes the identity tests drive for real (Debian 12): docker.io (dockerd, run by
# the tests with a private data root and socket), podman (runc, cgroupfs manager) and lxc
# (busybox template). Without root or apt-get this only reports what is missing.
set -euo pipefail
pkgs=(docker.io podman lxc lxc-templates uidmap)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # policy-rc.d 101: the packages' services (docker, lxc-net) are not started at install;
    # the tests start their own dockerd.
    policy=/usr/sbin/policy-rc.d
    made_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
    fi
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
    if [ "$made_policy" = 1 ]; then rm -f "$policy"; fi
else
    echo "not root or no apt-get: missing ${missing[*]}; tests needing them will skip"
fi
