#!/usr/bin/env bash
# Builds final_cpu.bpf.o (CO-RE: compiled once against this host's kernel BTF, relocated by
# libbpf against the running kernel's when loaded). Needs clang, bpftool and libbpf's headers
# (Debian: clang llvm bpftool libbpf-dev). `--optional`: without them, say so and exit 0
# (the agent then runs without the rmdir probe and says so).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
optional=${1:-}
missing=()
for tool in clang bpftool; do command -v "$tool" >/dev/null || missing+=("$tool"); done
[ -e /usr/include/bpf/bpf_helpers.h ] || missing+=("libbpf-dev")
[ -e /sys/kernel/btf/vmlinux ] || missing+=("/sys/kernel/btf/vmlinux")
if [ ${#missing[@]} -gt 0 ]; then
    echo "final_cpu.bpf.o not built: missing ${missing[*]}"
    [ "$optional" = "--optional" ] && exit 0
    exit 1
fi
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
bpftool btf dump file /sys/kernel/btf/vmlinux format c > "$build/vmlinux.h"
clang -O2 -g -target bpf -D__TARGET_ARCH_x86 -I"$build" \
    -c "$here/final_cpu.bpf.c" -o "$build/final_cpu.bpf.o"
# The DWARF is not needed at load (BTF is): 0.6 MB -> a few KB.
llvm-strip -g "$build/final_cpu.bpf.o" 2>/dev/null || true
mv "$build/final_cpu.bpf.o" "$here/final_cpu.bpf.o"
echo "built $here/final_cpu.bpf.o"
