#!/usr/bin/env bash
# Headless Chromium for the web UI tests (tests/test_web_*.py), Debian's `chromium` package.
# The page draws its charts with its own SVG code, so nothing is fetched from npm.
set -euo pipefail
command -v chromium >/dev/null && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing: chromium"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends chromium >/dev/null \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium >/dev/null; }
else
    echo "not root or no apt-get: chromium missing; the web UI browser tests will fail"
fi
