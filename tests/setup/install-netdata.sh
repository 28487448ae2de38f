#!/usr/bin/env bash
# Netdata 1.37 from Debian: tests/bench/bench_vs_netdata.py runs it side by side with agentd.
# Its packaged service is stopped and disabled where an init system runs (the benchmark starts
# its own instance with a private config).
set -euo pipefail
command -v netdata >/dev/null && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "not root or no apt-get: netdata missing; bench_vs_netdata.py will say so"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends netdata >/dev/null \
    || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends netdata >/dev/null; }
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl disable --now netdata >/dev/null 2>&1 || true
fi
