#!/usr/bin/env bash
# A working CRIU for the checkpoint tests and the control component.
#
# Debian 12's criu 3.17 fails `criu check` on recent kernels (vdso). CRIU 4.x from Debian 13
# (trixie) works when its .deb and its libraries' .debs (trixie's glibc included) are unpacked
# into a private prefix and run through that prefix's own loader. On kernels >= 6.16 trixie's
# CRIU 4.1 cannot dump any inet socket (getsockopt SO_PASSCRED now answers EOPNOTSUPP: "Can't
# get 1:16 opt"), so after `criu check` a probe dumps a process holding a listening TCP socket;
# when that fails and CRIU_SUITE was not given, the prefix is rebuilt from sid (CRIU 4.2).
# This script:
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
FALLBACK_SUITE=${CRIU_SUITE:+none}
FALLBACK_SUITE=${FALLBACK_SUITE:-sid}
MIRROR=${CRIU_MIRROR:-http://deb.debian.org/debian}
KEYRING=${CRIU_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}
ARCH=$(dpkg --print-architecture 2>/dev/null || echo amd64)
WRAPPER="$PREFIX/criu"

say() { echo "install-criu: $*"; }

# Can this CRIU dump a process that holds a TCP socket? (--leave-running: the probe goes on.)
probe_inet() {
    local criu=$1 dir pid rc
    dir=$(mktemp -d)
    setsid python3 -c 'import socket, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1); time.sleep(30)' \
        </dev/null >/dev/null 2>&1 &
    pid=$!
    sleep 0.5
    rc=0
    "$criu" dump -t "$pid" -D "$dir" -o dump.log --leave-running >/dev/null 2>&1 || rc=$?
    [ $rc = 0 ] || grep -m3 'Error' "$dir/dump.log" 2>/dev/null | sed 's/^/    /' >&2 || true
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
    return $rc
}

works() { "$1" check >/dev/null 2>&1 && probe_inet "$1"; }

if [ -x "$WRAPPER" ] && works "$WRAPPER"; then
    say "$WRAPPER already works: $("$WRAPPER" --version | tr '\n' ' ')"
    exit 0
fi
if command -v criu >/dev/null && [ "$(id -u)" = 0 ] && works "$(command -v criu)"; then
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

# Fetch criu and its libraries from suite $1 into $PREFIX and write the wrapper.
install_from() {
    local SUITE=$1
    rm -rf "${PREFIX:?}/usr" "${PREFIX:?}/lib" "${PREFIX:?}/lib64" "${PREFIX:?}/etc" "$WRAPPER"
    APTDIR="$PREFIX/.apt/$SUITE"
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
        return 1
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
        return 1
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
        return 1
    fi
    LIBPATH="$PREFIX/usr/lib/x86_64-linux-gnu:$PREFIX/lib/x86_64-linux-gnu"
    BIN="$PREFIX/usr/sbin/criu"

    missing=$("$LOADER" --library-path "$LIBPATH" --list "$BIN" 2>&1 | awk '/not found/ {print $1}' || true)
    if [ -n "$missing" ]; then
        say "libraries still missing: $missing; checkpoint tests will skip"
        return 1
    fi

    # The wrapper runs CRIU with the prefix's loader and libraries, never the system's.
    {
        echo '#!/bin/sh'
        echo "# Written by tests/setup/install-criu.sh: CRIU from Debian $SUITE in a private prefix."
        echo "exec \"$LOADER\" --library-path \"$LIBPATH\" \"$BIN\" \"\$@\""
    } >"$WRAPPER.tmp"
    chmod 0755 "$WRAPPER.tmp"
    mv "$WRAPPER.tmp" "$WRAPPER"
}

if ! install_from "$SUITE"; then
    exit 0
fi
if ! "$WRAPPER" check >/dev/null 2>&1 || ! probe_inet "$WRAPPER"; then
    if [ "$FALLBACK_SUITE" != none ]; then
        say "CRIU from $SUITE cannot dump on this kernel (see above); trying $FALLBACK_SUITE"
        install_from "$FALLBACK_SUITE" || exit 0
    fi
fi
say "$("$WRAPPER" --version | tr '\n' ' ')"
if ! "$WRAPPER" check; then
    say "criu check FAILED for $WRAPPER; checkpoint tests will skip"
elif probe_inet "$WRAPPER"; then
    say "criu check and the TCP-socket dump probe passed: $WRAPPER"
else
    say "criu check passed but it cannot dump inet sockets here: $WRAPPER"
fi
exit 0
