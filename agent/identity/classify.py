"""Which workload a cgroup path is, from the path alone (pure, cheap, exhaustively tested).

Path rules:

- docker: `/docker/<64hex>`, `docker-<64hex>.scope`
- containerd (CRI): `cri-containerd-<64hex>.scope`; under a Kubernetes pod with the cgroupfs
  driver a bare `<64hex>` (containerd, the runtime nearly every cluster uses since dockershim
  went away; a runtime state file refines it)
- CRI-O: `crio-<64hex>.scope` / `crio-<64hex>`; `crio-conmon-*` is its monitor, not a container
- podman: `libpod-<64hex>.scope` (systemd manager) or `libpod-<64hex>` (cgroupfs manager);
  `libpod-conmon-*` is its monitor
- LXC: `lxc.payload.<name>`, `lxc.payload/<name>`, `lxc/<name>`; `lxc.monitor.*` is a monitor
- systemd-nspawn / machined: `machine-<escaped name>.scope`
- Kubernetes pods: `kubepods[.slice]`, QoS `burstable`/`besteffort` (none = guaranteed), pod
  `pod<uid>` or `kubepods[-<qos>]-pod<uid with _>.slice`
- services: `*.service`

A container's descendants (`init.scope`, `container`, ...) are plain cgroups of it, unless a
container rule matches them (a nested runtime, e.g. a Kubernetes node in docker).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from agent.model.snapshot import WorkloadKind

_HEX64 = r"[0-9a-f]{64}"
_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(rf"docker-({_HEX64})\.scope"), "docker"),
    (re.compile(rf"cri-containerd-({_HEX64})\.scope"), "containerd"),
    (re.compile(rf"crio-({_HEX64})(?:\.scope)?"), "cri-o"),
    (re.compile(rf"libpod-({_HEX64})(?:\.scope)?"), "podman"),
)
_MONITORS = (
    re.compile(rf"(?:crio|libpod)-conmon-{_HEX64}(?:\.scope)?"),
    re.compile(r"lxc\.monitor(?:\..+)?"),
)
_HEX64_RE = re.compile(_HEX64)
_LXC_PAYLOAD = re.compile(r"lxc\.payload\.(.+)")
_MACHINE = re.compile(r"machine-(.+)\.scope")
_KUBEPODS = re.compile(r"(?:.+-)?kubepods(?:\.slice)?")
_QOS_SLICE = re.compile(r"(?:.+-)?kubepods-(burstable|besteffort)\.slice")
_POD_SYSTEMD = re.compile(r"(?:.+-)?kubepods(?:-(burstable|besteffort))?-pod([0-9a-fA-F_]+)\.slice")
_POD_CGROUPFS = re.compile(r"pod([0-9a-fA-F-]{8,})")
_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")


class Role:
    """Why a cgroup got its kind (kept as a plain string in Classification.role)."""

    CONTAINER = "container"
    POD = "pod"
    MONITOR = "monitor"  # conmon, lxc.monitor: a runtime's helper, not a container
    SERVICE = "service"
    NESTED = "nested"  # a cgroup inside a container
    PLAIN = ""


@dataclass(frozen=True)
class Classification:
    kind: WorkloadKind
    #: docker, containerd, cri-o, podman, lxc, systemd-nspawn, systemd, or "" when unknown.
    runtime: str
    #: The runtime's id (container id, LXC/machine name); None for services and plain cgroups.
    id: str | None
    name: str
    pod_uid: str | None = None
    qos_class: str | None = None
    role: str = Role.PLAIN
    #: For a nested cgroup: the path of the container it belongs to.
    parent_container: str | None = None


def systemd_unescape(s: str) -> str:
    r"""Undo systemd unit-name escaping (`\x2d` -> `-`)."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), s)


def _container_rule(comp: str, parent: str, in_pod: bool) -> tuple[str, str, str] | None:
    """(runtime, id, name) when one path component is a container's own cgroup."""
    for rx, runtime in _RULES:
        m = rx.fullmatch(comp)
        if m:
            return runtime, m.group(1), m.group(1)[:12]
    if _HEX64_RE.fullmatch(comp):
        if parent == "docker":
            return "docker", comp, comp[:12]
        if in_pod:
            return "containerd", comp, comp[:12]
        return None
    m = _LXC_PAYLOAD.fullmatch(comp)
    if m:
        return "lxc", m.group(1), m.group(1)
    if parent in ("lxc", "lxc.payload") and not comp.startswith("lxc."):
        return "lxc", comp, comp
    m = _MACHINE.fullmatch(comp)
    if m:
        name = systemd_unescape(m.group(1))
        return _machine_runtime(name), name, name
    return None


def _machine_runtime(name: str) -> str:
    # machined registers libvirt guests too, as "qemu-<n>-<name>" / "lxc-<n>-<name>".
    if name.startswith("qemu-"):
        return "libvirt-qemu"
    if name.startswith("lxc-"):
        return "libvirt-lxc"
    return "systemd-nspawn"


@functools.lru_cache(maxsize=256)
def classify(path: str) -> Classification:
    """What the cgroup at `path` ("/"-rooted, relative to the hierarchy root) is.

    Pure; a new cgroup is classified a few times within moments (discovery, identity, its
    events), then again only at a rescan, at 5-8 µs a call. So a small cache, 5 s of 50 new
    cgroups a second: with 65,536 entries it held every ended container's result under churn
    (~1 MiB a minute, for 22 minutes), with 1,024 it held 0.3 MiB more than now."""
    parts = [p for p in path.split("/") if p]
    if not parts:
        return Classification(WorkloadKind.CGROUP, "", None, "/")
    kube = False
    qos: str | None = None
    pod_uid: str | None = None
    pod_index = -1
    enclosing: str | None = None
    last = len(parts) - 1
    for i, comp in enumerate(parts):
        parent = parts[i - 1] if i else ""
        # Kubernetes context, outermost first.
        if pod_uid is None:
            if _KUBEPODS.fullmatch(comp):
                kube = True
            elif kube and (m := _QOS_SLICE.fullmatch(comp)):
                qos = m.group(1)
            elif kube and comp in ("burstable", "besteffort"):
                qos = comp
            elif kube and (m := _POD_SYSTEMD.fullmatch(comp) or _POD_CGROUPFS.fullmatch(comp)):
                groups = m.groups()
                qos = groups[0] if len(groups) == 2 and groups[0] else qos or "guaranteed"
                pod_uid = groups[-1].replace("_", "-").lower()
                pod_index = i
                if i == last:
                    return Classification(
                        WorkloadKind.CGROUP, "", None, comp, pod_uid, qos, Role.POD, enclosing
                    )
                continue
        in_pod = pod_index == i - 1 and pod_index >= 0
        hit = _container_rule(comp, parent, in_pod)
        if i < last:
            if hit is not None and enclosing is None:
                enclosing = "/" + "/".join(parts[: i + 1])
            continue
        if hit is not None:
            runtime, cid, name = hit
            under_pod = pod_uid is not None and pod_index == i - 1
            return Classification(
                WorkloadKind.CONTAINER,
                runtime,
                cid,
                name,
                pod_uid if under_pod else None,
                qos if under_pod else None,
                Role.CONTAINER,
                enclosing,
            )
        if enclosing is not None:
            return Classification(
                WorkloadKind.CGROUP, "", None, comp, role=Role.NESTED, parent_container=enclosing
            )
        if any(rx.fullmatch(comp) for rx in _MONITORS):
            return Classification(
                WorkloadKind.CGROUP, "", None, comp, pod_uid, qos, role=Role.MONITOR
            )
        if comp.endswith(".service"):
            return Classification(WorkloadKind.SERVICE, "systemd", None, comp, role=Role.SERVICE)
    return Classification(WorkloadKind.CGROUP, "", None, parts[-1], pod_uid, qos)
