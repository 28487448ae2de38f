#!/usr/bin/env bash
# A working CRIU for the checkpoint tests and the control component.
#
# Debian 12's criu 3.17 fails `criu check` on recent kernels (vdso). CRIU 4.x from Debian 13
# (trixie) works when its .deb and its libraries' .debs (trixie's glibc included) are unpacked
# into a private prefix and run through that prefix's own loader. This script:
#   - fetches the .debs with apt-get pointed at a PRIVATE sources list, lists and cache directory
#     (the system's apt configuration and dpkg database are left untouched; nothing is installed);
#   - unpacks them with `dpkg -x` into $CRIU_PREFIX (default /opt/container-agent/criu);
#   - checks with the prefix's loader that no library is missing, fetching what is;
#   - writes the wrapper $CRIU_PREFIX/criu and runs `criu check`.
# Idempotent: a prefix whose wrapper already passes `criu check` is left as it is.
# Without root or apt-get it only reports; the checkpoint tests then skip with the reason.
set -euo pipefail

PREFIX=${CRIU_PREFIX:-/opt/container-agent/criu}
SUITE=${CRIU_SUITE:-trixie}
MIRROR=${CRIU_MIRROR:-http://deb.debian.org/debian}
KEYRING=${CRIU_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}
ARCH=$(dpkg --print-architecture 2>/dev/null || echo amd64)
WRAPPER="$PREFIX/criu"

say() { echo "install-criu: $*"; }

if [ -x "$WRAPPER" ] && "$WRAPPER" check >/dev/null 2>&1; then
    say "$WRAPPER already works: $("$WRAPPER" --version | tr '\n' ' ')"
    exit 0
fi
if command -v criu >/dev/null && criu check >/dev/null 2>&1; then
    say "system criu works ($(command -v criu)); private CRIU not needed"
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null || ! command -v dpkg >/dev/null; then
    say "not root or no apt-get/dpkg: no working CRIU; checkpoint tests will skip"
    exit 0
fi
if [ "$ARCH" != amd64 ]; then
    say "architecture $ARCH: only amd64 is handled; checkpoint tests will skip"
    exit 0
fi

APTDIR="$PREFIX/.apt"
DEBS="$APTDIR/debs"
mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial" "$DEBS"
echo "deb [signed-by=$KEYRING] $MIRROR $SUITE main" >"$APTDIR/sources.list"
# Every path apt would otherwise take from /etc/apt or /var/lib/apt points into $APTDIR.
APT_OPTS=(
    -o "Dir::Etc::SourceList=$APTDIR/sources.list"
    -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::Etc::Preferences=/dev/null"
    -o "Dir::Etc::PreferencesParts=/dev/null"
    -o "Dir::State::Lists=$APTDIR/lists"
    -o "Dir::Cache=$APTDIR/cache"
    -o "APT::Architecture=$ARCH"
    -o "APT::Architectures=$ARCH"
    -o "Acquire::Languages=none"
    -q
)

say "fetching $SUITE package lists into $APTDIR"
apt-get "${APT_OPTS[@]}" update >"$APTDIR/update.log" 2>&1 || {
    say "apt-get update for $SUITE failed (see $APTDIR/update.log); checkpoint tests will skip"
    tail -n 5 "$APTDIR/update.log"
    exit 0
}

# Direct dependencies of a package in the private lists: first alternative, names only.
deps_of() {
    apt-cache "${APT_OPTS[@]}" depends --no-recommends --no-suggests --no-conflicts \
        --no-breaks --no-replaces --no-enhances "$1" 2>/dev/null \
        | awk '/^ *(\|)?(Pre)?Depends:/ {print $2}' | sed 's/:any$//' | grep -v '^<' | sort -u
}

# criu plus every library package reachable through Depends (libc6 included: it brings the
# loader). Non-library dependencies (python3, iproute2, ...) are not needed for dump/restore.
declare -A seen=()
queue=(criu)
while [ ${#queue[@]} -gt 0 ]; do
    pkg=${queue[0]}
    queue=("${queue[@]:1}")
    [ -n "${seen[$pkg]:-}" ] && continue
    seen[$pkg]=1
    for dep in $(deps_of "$pkg"); do
        case "$dep" in
        lib*) [ -z "${seen[$dep]:-}" ] && queue+=("$dep") ;;
        esac
    done
done
pkgs=("${!seen[@]}")
say "fetching ${#pkgs[@]} packages: ${pkgs[*]}"
(cd "$DEBS" && apt-get "${APT_OPTS[@]}" download "${pkgs[@]}" >"$APTDIR/download.log" 2>&1) || {
    say "apt-get download failed (see $APTDIR/download.log); checkpoint tests will skip"
    tail -n 5 "$APTDIR/download.log"
    exit 0
}
for deb in "$DEBS"/*.deb; do
    dpkg -x "$deb" "$PREFIX"
done

LOADER=""
for cand in "$PREFIX/usr/lib64/ld-linux-x86-64.so.2" "$PREFIX/lib64/ld-linux-x86-64.so.2" \
    "$PREFIX/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"; do
    if [ -e "$cand" ]; then LOADER=$cand; break; fi
done
if [ -z "$LOADER" ]; then
    say "no loader (ld-linux-x86-64.so.2) in $PREFIX; checkpoint tests will skip"
    exit 0
fi
LIBPATH="$PREFIX/usr/lib/x86_64-linux-gnu:$PREFIX/lib/x86_64-linux-gnu"
BIN="$PREFIX/usr/sbin/criu"

missing=$("$LOADER" --library-path "$LIBPATH" --list "$BIN" 2>&1 | awk '/not found/ {print $1}' || true)
if [ -n "$missing" ]; then
    say "libraries still missing: $missing; checkpoint tests will skip"
    exit 0
fi

# The wrapper runs CRIU with the prefix's loader and libraries, never the system's.
cat >"$WRAPPER.tmp" <<EOF
#!/bin/sh
# Written by tests/setup/install-criu.sh: CRIU from Debian $SUITE in a private prefix.
exec "$LOADER" --library-path "$LIBPATH" "$BIN" "\$@"
EOF
chmod 0755 "$WRAPPER.tmp"
mv "$WRAPPER.tmp" "$WRAPPER"

say "$("$WRAPPER" --version | tr '\n' ' ')"
if "$WRAPPER" check; then
    say "criu check passed: $WRAPPER"
else
    say "criu check FAILED for $WRAPPER; checkpoint tests will skip"
fi
exit 0
