#!/usr/bin/env bash
# make test-v2: the pure cgroup v2 tests in a real Debian 12 guest with systemd as PID 1.
#
# Builds or reuses the cached guest image (build-image.sh), stages a work disk holding this
# checkout (tracked and untracked-not-ignored files), boots the guest under TCG emulation (KVM
# is not usable here: nested virtualisation hangs after the BIOS) with a hard timeout, reads
# the results back from the work disk with debugfs after power-off, prints them, and exits
# non-zero when the guest tests failed or the guest did not finish.
#
# Environment: PYTHON (with pip; default .venv/bin/python), CA_V2_CACHE (image cache, default
# /var/cache/container-agent-v2), CA_V2_TIMEOUT (seconds the guest may run, default 540),
# CA_V2_RESULTS (where the guest's logs are kept, default var/v2host).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
cache=${CA_V2_CACHE:-/var/cache/container-agent-v2}
limit=${CA_V2_TIMEOUT:-540}
out=${CA_V2_RESULTS:-$repo/var/v2host}

t0=$(date +%s)
image=$(bash "$here/build-image.sh" "$cache" "$python")
t_image=$(( $(date +%s) - t0 ))

work=$(mktemp -d /var/tmp/ca-v2-run.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/stage/repo" "$work/stage/results"
(cd "$repo" && git ls-files -z -co --exclude-standard \
    | xargs -0 -r sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh \
    | tar --null -T - -cf -) | tar -xf - -C "$work/stage/repo"
# Built by make, ignored by git: the rmdir eBPF program (CO-RE: relocated to the guest's kernel).
cp "$repo/collectors/bpf/final_cpu.bpf.o" "$work/stage/repo/collectors/bpf/"
mkfs.ext4 -q -F -L ca-v2-work -d "$work/stage" "$work/work.img" 256M

echo "v2 guest: booting (TCG, 2 CPUs, 2 GiB, at most ${limit} s)"
t1=$(date +%s)
set +e
# snapshot=on: the cached image is never written; the guest's changes go to a temporary file.
timeout --kill-after=10 "$limit" qemu-system-x86_64 -accel tcg,thread=multi -cpu max -smp 2 \
    -m 2048 -kernel "$image/vmlinuz" -initrd "$image/initrd.img" \
    -append "root=/dev/vda rw console=ttyS0 quiet mitigations=off panic=-1" \
    -drive "file=$image/disk.img,format=raw,if=virtio,snapshot=on" \
    -drive "file=$work/work.img,format=raw,if=virtio" \
    -nic none -display none -monitor none -serial "file:$work/console.log" -no-reboot
qemu_rc=$?
set -e
t_guest=$(( $(date +%s) - t1 ))

rm -rf "$out" && mkdir -p "$out"
cp "$work/console.log" "$out/console.log"
debugfs -R "rdump /results $out" "$work/work.img" >/dev/null 2>&1 || true
echo "--- v2 guest results ($out) ---"
cat "$out/results/summary.txt" 2>/dev/null || echo "(no summary: the guest test run did not start)"
if [ -s "$out/results/pytest.log" ]; then
    echo "--- pytest (last lines) ---"
    tail -n 25 "$out/results/pytest.log"
fi
echo "--- v2 timing: image ${t_image} s, guest boot+run ${t_guest} s, total $(( $(date +%s) - t0 )) s ---"
if [ "$qemu_rc" = 124 ] || [ "$qemu_rc" = 137 ]; then
    echo "v2 guest did not finish within ${limit} s (qemu killed); console tail:"
    tail -n 30 "$out/console.log"
    exit 1
fi
rc=$(cat "$out/results/pytest-rc" 2>/dev/null || echo missing)
if [ "$rc" != 0 ]; then
    echo "v2 guest tests failed (pytest exit: $rc, qemu exit: $qemu_rc); console tail:"
    tail -n 30 "$out/console.log"
    exit 1
fi
