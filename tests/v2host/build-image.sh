#!/usr/bin/env bash
# Build (or reuse) the pure cgroup v2 guest: a Debian 12 root filesystem with systemd as PID 1,
# the packages in packages.txt, the agent's Python dependencies (wheels for the guest's Python
# 3.11, installed with pip --target on this host) and the unit that runs the tests at boot.
#
#   build-image.sh CACHE_DIR PYTHON   -> prints the image directory (disk.img, vmlinuz, initrd.img)
#
# The image is cached under CACHE_DIR/<key>, the key being a hash of everything that goes into
# it (this script, packages.txt, the unit, the dependency list from pyproject.toml): a change to
# any of them builds a new image; older images are removed. Needs root (mmdebstrap in root mode).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${1:?cache dir}
python=${2:?python with pip}

# Runtime and test dependencies the guest needs; linters and the parquet extra stay on the host.
requirements=$("$python" - "$repo/pyproject.toml" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
skip = ("mypy", "ruff", "pyarrow", "types-")
deps = project["dependencies"] + project["optional-dependencies"]["test"]
print("\n".join(sorted(d for d in deps if not d.startswith(skip))))
PY
)
packages=$(grep -v '^#' "$here/packages.txt" | grep -v '^$' | paste -sd, -)
key=$( { cat "$here/build-image.sh" "$here/packages.txt" "$here/ca-v2-run.service";
         echo "$requirements"; } | sha256sum | cut -c1-16)
image="$cache/$key"
if [ -f "$image/disk.img" ] && [ -f "$image/vmlinuz" ] && [ -f "$image/initrd.img" ]; then
    echo "v2 guest image: cached $image" >&2
    echo "$image"
    exit 0
fi

mkdir -p "$cache"
build=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$build"' EXIT
root="$build/root"
start=$(date +%s)
echo "v2 guest image: building $image (packages: $packages)" >&2
# Docs, man pages and locales are not needed: a smaller tree is a faster mkfs and boot.
mmdebstrap --quiet --variant=minbase --include="$packages" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    bookworm "$root" >&2

# The agent's dependencies: binary wheels for CPython 3.11 on glibc 2.36 (Debian 12). pip
# matches the listed platform tags literally, so the manylinux levels wheels use are named.
# shellcheck disable=SC2086  # one requirement a word
"$python" -m pip install --quiet --no-cache-dir --disable-pip-version-check \
    --target "$root/opt/container-agent/site" \
    --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
    --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --only-binary=:all: $requirements 2> >(grep -v "^WARNING: Location" >&2)

# System set-up: the work disk (repo in, results out) on /mnt/work, the test unit enabled,
# timers that would only add noise to a short-lived guest switched off, an empty root password
# for debugging on the serial console.
mkdir -p "$root/mnt/work"
echo "/dev/vdb /mnt/work ext4 defaults 0 2" > "$root/etc/fstab"
echo "ca-v2-guest" > "$root/etc/hostname"
install -m 0644 "$here/ca-v2-run.service" "$root/etc/systemd/system/ca-v2-run.service"
systemctl --root="$root" enable ca-v2-run.service >&2
systemctl --root="$root" mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
    fstrim.timer systemd-tmpfiles-clean.timer 2>/dev/null
chroot "$root" passwd -d root >/dev/null

cp "$root"/boot/vmlinuz-* "$build/vmlinuz"
cp "$root"/boot/initrd.img-* "$build/initrd.img"
# Room for the tests' files and logs beside the ~700 MB tree; sparse, so it costs what is used.
mkfs.ext4 -q -F -L ca-v2-root -d "$root" "$build/disk.img" 3G >&2
rm -rf "$root"
rm -rf "$image"
mv "$build" "$image"
trap - EXIT
# Only the current image is kept.
find "$cache" -mindepth 1 -maxdepth 1 -type d ! -name "$key" -exec rm -rf {} +
echo "v2 guest image: built in $(( $(date +%s) - start )) s" >&2
echo "$image"
