// SPDX-License-Identifier: GPL-2.0
/*
 * A cgroup2 cgroup's CPU usage at the moment it is removed (tracepoint cgroup:cgroup_rmdir).
 *
 * A runtime may rmdir a cgroup microseconds after it empties (systemd removes a scope at
 * once), before any reader in user space sees `populated 0`; after the rmdir its cpu.stat is
 * gone. Here the kernel's own counter is read in the rmdir itself: the flushed total
 * (cgrp->bstat) plus what each CPU has not flushed yet (per-CPU bstat - last_bstat), which is
 * what cpu.stat's usage_usec would show after its flush, in ns. Keyed by the cgroup's id
 * (kernfs node id: the directory's inode number on 64-bit), consumed by the agent.
 *
 * The per-CPU area is not typed as such in this kernel's BTF, so bpf_per_cpu_ptr() cannot be
 * used on it: each CPU's per-CPU offset is taken from a one-slot per-CPU array map instead
 * (the address of its slot on that CPU minus the map's per-CPU base pointer).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

#define MAX_CPUS 4096

struct final_cpu {
	__u64 usage_ns;
	__u64 at_ns; /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct final_cpu);
} final_cpu SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} cpu_slot SEC(".maps");

/*
 * The same cgroups' ids by path (as the tracepoint gives it: from the hierarchy's root), for a
 * cgroup the agent never saw: made and removed before its watch got to the IN_CREATE, it knows
 * only the path. Zero-padded, so a path is its own hash key; longer ones are cut (the agent
 * cuts its own alike). Fewer entries than final_cpu: a path is looked up within seconds.
 */
#define PATH_KEY 512

struct path_key {
	char path[PATH_KEY];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct path_key);
	__type(value, __u64);
} id_by_path SEC(".maps");

/* The key is too big for the BPF stack: built in a per-CPU slot. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct path_key);
} path_scratch SEC(".maps");

/* Kernels before 6.16 kept the per-CPU base stats in struct cgroup_rstat_cpu. */
struct cgroup_rstat_cpu___old {
	struct cgroup_base_stat bstat;
	struct cgroup_base_stat last_bstat;
} __attribute__((preserve_access_index));

struct cgroup___old {
	struct cgroup_rstat_cpu___old *rstat_cpu;
} __attribute__((preserve_access_index));

/* A pointer's value as a number (for the per-CPU offset arithmetic). */
static __always_inline __u64 address_of(const void *p)
{
	__u64 v = 0;

	bpf_probe_read_kernel(&v, sizeof(v), &p);
	return v;
}

SEC("tp_btf/cgroup_rmdir")
int BPF_PROG(on_rmdir, struct cgroup *cgrp, const char *path)
{
	struct final_cpu out = {};
	struct path_key *key;
	__u64 pcpu = 0, base = 0, id, sum, last;
	__u32 zero = 0, cpu;
	int old = 0;

	if (BPF_CORE_READ(cgrp, root, hierarchy_id) != 0)
		return 0; /* the cgroup2 hierarchy only */
	out.usage_ns = BPF_CORE_READ(cgrp, bstat.cputime.sum_exec_runtime);
	if (bpf_core_field_exists(cgrp->rstat_base_cpu)) {
		bpf_core_read(&pcpu, sizeof(pcpu), &cgrp->rstat_base_cpu);
	} else {
		struct cgroup___old *o = (void *)cgrp;

		bpf_core_read(&pcpu, sizeof(pcpu), &o->rstat_cpu);
		old = 1;
	}
	if (!pcpu)
		return 0;
	bpf_probe_read_kernel(&base, sizeof(base),
			      (void *)(address_of(&cpu_slot) +
				       bpf_core_field_offset(struct bpf_array, pptrs)));
	if (!base)
		return 0;
	for (cpu = 0; cpu < MAX_CPUS; cpu++) {
		void *slot = bpf_map_lookup_percpu_elem(&cpu_slot, &zero, cpu);
		__u64 at;

		if (!slot)
			break; /* past the last possible CPU */
		at = pcpu + (address_of(slot) - base);
		sum = last = 0;
		if (old) {
			struct cgroup_rstat_cpu___old *rc = (void *)at;

			bpf_core_read(&sum, sizeof(sum), &rc->bstat.cputime.sum_exec_runtime);
			bpf_core_read(&last, sizeof(last), &rc->last_bstat.cputime.sum_exec_runtime);
		} else {
			struct cgroup_rstat_base_cpu *rc = (void *)at;

			bpf_core_read(&sum, sizeof(sum), &rc->bstat.cputime.sum_exec_runtime);
			bpf_core_read(&last, sizeof(last), &rc->last_bstat.cputime.sum_exec_runtime);
		}
		out.usage_ns += sum - last;
	}
	id = BPF_CORE_READ(cgrp, kn, id);
	out.at_ns = bpf_ktime_get_ns();
	bpf_map_update_elem(&final_cpu, &id, &out, BPF_ANY);
	key = bpf_map_lookup_elem(&path_scratch, &zero);
	if (key && path) {
		__builtin_memset(key->path, 0, sizeof(key->path));
		if (bpf_probe_read_kernel_str(key->path, sizeof(key->path), path) > 0)
			bpf_map_update_elem(&id_by_path, key, &id, BPF_ANY);
	}
	return 0;
}
