"""The one model every sink uses: workload identity, per-cycle state, and the snapshot.

A *workload* is any cgroup the agent tracks. Containers are workloads whose runtime was
recognised (docker, containerd, cri-o, podman, lxc, nspawn, runc, crun) or whose processes live in
namespaces other than the host's (runtime "unknown"); systemd services are workloads of kind
"service"; every other cgroup is kind "cgroup".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from collectors.samples import CgroupSample

EMPTY_LABELS: Mapping[str, str] = MappingProxyType({})
EMPTY_NS: Mapping[str, int] = MappingProxyType({})


class WorkloadKind(StrEnum):
    CONTAINER = "container"
    SERVICE = "service"
    CGROUP = "cgroup"


@dataclass(frozen=True, slots=True)
class WorkloadIdentity:
    """Who a cgroup belongs to. Stable across cycles for one incarnation."""

    #: Stable id: the runtime's container id when known, else the cgroup path.
    id: str
    kind: WorkloadKind
    #: docker, containerd, cri-o, podman, lxc, systemd-nspawn, runc, crun, systemd, unknown, or "".
    runtime: str
    name: str
    #: cgroup path relative to the reference hierarchy root, starting with "/".
    cgroup: str
    #: Directory inode of the cgroup in the reference hierarchy (the incarnation key).
    inode: int
    pod_name: str | None = None
    pod_uid: str | None = None
    namespace: str | None = None
    qos_class: str | None = None
    init_pid: int | None = None
    #: Namespace kind (net, pid, mnt, ...) -> inode of the init process's namespace.
    namespaces: Mapping[str, int] = field(default_factory=lambda: EMPTY_NS)
    labels: Mapping[str, str] = field(default_factory=lambda: EMPTY_LABELS)
    #: Image reference the runtime started it from (docker/podman API, CRI annotations).
    image: str | None = None
    #: Kubernetes container name (the pod spec's), where the runtime knows it.
    container_name: str | None = None

    @property
    def incarnation(self) -> tuple[str, int]:
        return (self.cgroup, self.inode)


@dataclass(frozen=True, slots=True)
class Rates:
    """Per-second rates from two samples of the same incarnation; None when not computable."""

    cpu_cores: float | None = None
    cpu_user_cores: float | None = None
    cpu_system_cores: float | None = None
    cpu_throttled_share: float | None = None
    io_read_bytes_per_s: float | None = None
    io_write_bytes_per_s: float | None = None
    io_read_ops_per_s: float | None = None
    io_write_ops_per_s: float | None = None
    net_rx_bytes_per_s: float | None = None
    net_tx_bytes_per_s: float | None = None


@dataclass(frozen=True, slots=True)
class WorkloadState:
    identity: WorkloadIdentity
    sample: CgroupSample
    rates: Rates | None = None


@dataclass(frozen=True, slots=True)
class HostInfo:
    hostname: str
    boot_id: str
    machine_id: str
    kernel: str
    #: unified, hybrid or legacy.
    cgroup_layout: str
    cpus: int
    memory_bytes: int
    agent_version: str
    #: Extra facts added by components (CRIU version, PSI support, ...).
    facts: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one collection cycle produced. Scrapes and API calls read only this."""

    seq: int
    wall_ns: int
    monotonic_ns: int
    #: CPU time (user+system, ns) the cycle itself cost the agent.
    cycle_cpu_ns: int
    host: HostInfo
    #: Keyed by workload id.
    workloads: Mapping[str, WorkloadState]
    #: Opaque per-component data (e.g. "network" -> NetworkSnapshot), keyed by component name.
    extras: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))

    def find(self, ref: str) -> WorkloadState | None:
        """Look a workload up by id, id prefix (>= 12 chars), name or cgroup path."""
        if ref in self.workloads:
            return self.workloads[ref]
        by_name = self.named(ref)
        if len(by_name) == 1:
            return by_name[0]
        by_cgroup = [w for w in self.workloads.values() if w.identity.cgroup == ref]
        if len(by_cgroup) == 1:
            return by_cgroup[0]
        if len(ref) >= 12:
            by_prefix = [w for k, w in self.workloads.items() if k.startswith(ref)]
            if len(by_prefix) == 1:
                return by_prefix[0]
        return None

    def named(self, name: str) -> list[WorkloadState]:
        """Every workload whose human name is `name` (more than one: the name is ambiguous)."""
        return [w for w in self.workloads.values() if w.identity.name == name]
