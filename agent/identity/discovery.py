"""Container discovery: which cgroup is which workload.

Three sources, cheapest first:
1. path rules (`classify`, pure: cheap and exhaustively testable), following the paths runtimes
   create with the cgroupfs and systemd drivers (agent/classify.py);
2. OCI runtime state files (runc/crun, also docker's and containerd's runc roots): init pid,
   bundle, annotations; a cgroup a state points at is a runc/crun container;
3. namespaces: a cgroup none of the above claims, whose processes live in a pid or mnt
   namespace other than the host's, is a container of runtime "unknown".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

from agent.identity.classify import Classification, Role, classify
from agent.model.snapshot import WorkloadIdentity, WorkloadKind
from collectors.cgroup_tree import cgroup_dir, inode_of, read_procs, walk
from collectors.layout import CgroupLayout
from collectors.procfs import (
    NamespaceId,
    ProcessInfo,
    host_namespaces,
    read_process,
    read_processes,
)
from collectors.runtime_state import (
    DEFAULT_RUNTIME_ROOTS,
    RuntimeState,
    StateCache,
    read_runtime_states,
)

# --- Discovery: path rules + runtime states + namespaces -----------------------------------

#: Namespaces whose difference from the host's makes a cgroup a container.
_ISOLATING = ("pid", "mnt")

# Annotation keys runtimes use for Kubernetes names (containerd CRI first, then CRI-O).
_K8S_POD = ("io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name")
_K8S_NAMESPACE = ("io.kubernetes.cri.sandbox-namespace", "io.kubernetes.pod.namespace")
_K8S_CONTAINER = ("io.kubernetes.cri.container-name", "io.kubernetes.container.name")
_K8S_POD_UID = ("io.kubernetes.cri.sandbox-uid", "io.kubernetes.pod.uid")
_K8S_TYPE = ("io.kubernetes.cri.container-type", "io.kubernetes.cri-o.ContainerType")
_K8S_IMAGE = ("io.kubernetes.cri.image-name", "io.kubernetes.cri-o.ImageName")
#: podman marks the containers it made (it runs them with runc or crun underneath).
_MANAGER = "io.container.manager"


def _first(annotations: Mapping[str, str], keys: Iterable[str]) -> str | None:
    for k in keys:
        v = annotations.get(k)
        if v:
            return v
    return None


def _ancestors(path: str) -> Iterable[str]:
    """"/a/b/c" -> "/a/b", "/a" (nearest first; "/" is never a container)."""
    while True:
        path = path.rsplit("/", 1)[0]
        if not path:
            return
        yield path


class Discovery:
    """Recognises the workloads of one host: a full `scan()` per cycle (one procfs pass, one
    tree walk) and `identify()` for a single new cgroup between scans."""

    def __init__(
        self,
        layout: CgroupLayout,
        *,
        proc_root: Path = Path("/proc"),
        runtime_roots: Mapping[str, Path] = DEFAULT_RUNTIME_ROOTS,
    ) -> None:
        self.layout = layout
        self.root = layout.reference_root
        self.proc_root = proc_root
        self.runtime_roots = runtime_roots
        #: Hierarchy key of the reference tree in /proc/<pid>/cgroup.
        self.ref_key = self._reference_key(layout)
        self._state_cache: StateCache = {}
        #: Container cgroups (path -> id) as of the last scan/identify, for nesting decisions.
        self._containers: dict[str, str] = {}
        #: The host's namespaces as of the last scan (they do not change while we run).
        self._host: Mapping[str, NamespaceId] = {}

    @staticmethod
    def _reference_key(layout: CgroupLayout) -> str:
        if layout.unified is not None:
            return "unified"
        ref = layout.reference_root
        for ctrl in ("cpuacct", "cpu", "memory", "pids", *layout.v1):
            if layout.v1.get(ctrl) == ref:
                return ctrl
        return "unified"

    # -- public ---------------------------------------------------------------------------

    def scan(self) -> dict[str, WorkloadIdentity]:
        """Every cgroup of the reference tree, keyed by WorkloadIdentity.id."""
        dirs = walk(self.root)
        procs = read_processes(self.proc_root)
        host = self._host = host_namespaces(self.proc_root)
        by_cgroup: dict[str, list[ProcessInfo]] = {}
        for info in procs.values():
            cg = info.cgroups.get(self.ref_key)
            if cg is not None:
                by_cgroup.setdefault(cg, []).append(info)
        present = {d.path for d in dirs}
        states = self._place_states(self._states(), procs, present)
        containers: dict[str, str] = {}
        out: dict[str, WorkloadIdentity] = {}
        for d in dirs:
            ident = self._build(
                d.path, d.inode, by_cgroup, states.get(d.path), containers, procs, host
            )
            if ident.kind is WorkloadKind.CONTAINER:
                containers[d.path] = ident.id
            if ident.id in out:  # two cgroups claim one id: keep both, the later by path
                ident = replace(ident, id=d.path)
            out[ident.id] = ident
        self._containers = containers
        return out

    def identify(self, path: str) -> WorkloadIdentity | None:
        """One cgroup (e.g. just created); None if it does not exist (any more)."""
        inode = inode_of(self.root, path)
        if inode is None:
            return None
        procs: dict[int, ProcessInfo] = {}
        pids = read_procs(self.root, path)
        if not pids and path != "/":  # a container may run its processes in sub-cgroups only
            sub = walk(cgroup_dir(self.root, path))
            pids = tuple(p for d in sub for p in read_procs(self.root, path + d.path))
        for pid in pids:
            info = read_process(pid, self.proc_root)
            if info is not None:
                procs[pid] = info
        states = self._states()
        present = {path}
        for st in states.values():
            recorded = self._state_cgroup(st)
            if recorded is not None and inode_of(self.root, recorded) is not None:
                present.add(recorded)  # placed by its recorded path: no process to read
            elif st.init_pid is not None and st.init_pid not in procs:
                info = read_process(st.init_pid, self.proc_root)  # placed by its init's cgroup
                if info is not None:
                    procs[st.init_pid] = info
        by_cgroup: dict[str, list[ProcessInfo]] = {}
        for info in procs.values():
            cg = info.cgroups.get(self.ref_key)
            if cg is not None:
                by_cgroup.setdefault(cg, []).append(info)
        placed = self._place_states(states, procs, present)
        mine = placed.get(path)
        if mine is not None and mine.init_pid is not None and mine.init_pid not in procs:
            info = read_process(mine.init_pid, self.proc_root)
            if info is not None:
                procs[mine.init_pid] = info
        ident = self._build(
            path, inode, by_cgroup, placed.get(path), self._containers, procs,
            self._host or host_namespaces(self.proc_root),
        )
        if inode_of(self.root, path) != inode:
            return None  # removed (or replaced) while we looked
        if ident.kind is WorkloadKind.CONTAINER:
            self._containers[path] = ident.id
        return ident

    # -- runtime states --------------------------------------------------------------------

    def _states(self) -> dict[str, RuntimeState]:
        return read_runtime_states(self.runtime_roots, self._state_cache)

    def _state_cgroup(self, st: RuntimeState) -> str | None:
        """The reference-tree path a runtime state names, if it names one."""
        key = "" if self.ref_key == "unified" else self.ref_key
        recorded = st.cgroup_paths.get(key)
        if recorded:
            try:
                rel = Path(recorded).relative_to(self.root)
            except ValueError:
                return None
            return "/" + str(rel) if str(rel) != "." else "/"
        if st.runtime == "crun" and st.cgroup_path:
            # crun records the path relative to the cgroup root of every hierarchy.
            return "/" + st.cgroup_path.strip("/")
        return None

    def _alive(self, st: RuntimeState, procs: Mapping[int, ProcessInfo]) -> ProcessInfo | None:
        """The state's init process, if it is still the process the runtime started."""
        if st.init_pid is None:
            return None
        info = procs.get(st.init_pid)
        if info is None:
            return None
        if st.init_start_ticks is not None and info.start_ticks != st.init_start_ticks:
            return None  # pid reused: the state is stale
        return info

    def _place_states(
        self,
        states: Mapping[str, RuntimeState],
        procs: Mapping[int, ProcessInfo],
        present: set[str],
    ) -> dict[str, RuntimeState]:
        """cgroup path -> state: the path the state records, else its live init's cgroup.

        A state that lands in a sub-cgroup of a path-rule container of the same id (podman's
        `libpod-<id>.scope/container`) belongs to that container.
        """
        out: dict[str, RuntimeState] = {}
        for st in states.values():
            path = self._state_cgroup(st)
            if path is None or path not in present:
                init = self._alive(st, procs)
                path = init.cgroups.get(self.ref_key) if init is not None else None
            if path is None:
                continue
            for anc in _ancestors(path):
                if classify(anc).id == st.id:
                    path = anc
                    break
            if path in present:
                out.setdefault(path, st)
        return out

    # -- one identity ----------------------------------------------------------------------

    def _build(
        self,
        path: str,
        inode: int,
        by_cgroup: Mapping[str, list[ProcessInfo]],
        state: RuntimeState | None,
        containers: Mapping[str, str],
        procs: Mapping[int, ProcessInfo],
        host: Mapping[str, NamespaceId],
    ) -> WorkloadIdentity:
        cls = classify(path)
        own = by_cgroup.get(path, [])
        enclosing = cls.parent_container or next(
            (a for a in _ancestors(path) if a in containers), None
        )
        labels: dict[str, str] = {}
        if cls.kind is WorkloadKind.CONTAINER or (
            state is not None and cls.role != Role.MONITOR
        ):
            return self._container(path, inode, cls, state, own, by_cgroup, procs, host)
        if enclosing is not None:
            labels["parent_container"] = containers.get(enclosing, enclosing)
            return WorkloadIdentity(
                id=path, kind=WorkloadKind.CGROUP, runtime="", name=cls.name, cgroup=path,
                inode=inode, labels=MappingProxyType(labels),
            )
        if cls.kind is WorkloadKind.CGROUP and cls.role == Role.PLAIN and path != "/":
            init = _oldest(own, host) if any(_isolated(p, host) for p in own) else None
            if init is not None:
                return WorkloadIdentity(
                    id=path, kind=WorkloadKind.CONTAINER, runtime="unknown", name=cls.name,
                    cgroup=path, inode=inode, init_pid=init.pid,
                    namespaces=_ns_inodes(init),
                )
        return WorkloadIdentity(
            id=path, kind=cls.kind, runtime=cls.runtime, name=cls.name, cgroup=path,
            inode=inode, pod_uid=cls.pod_uid, qos_class=cls.qos_class,
        )

    def _container(
        self,
        path: str,
        inode: int,
        cls: Classification,
        state: RuntimeState | None,
        own: list[ProcessInfo],
        by_cgroup: Mapping[str, list[ProcessInfo]],
        procs: Mapping[int, ProcessInfo],
        host: Mapping[str, NamespaceId],
    ) -> WorkloadIdentity:
        runtime, cid, name = cls.runtime, cls.id, cls.name
        labels: dict[str, str] = {}
        pod_name = namespace = image = container = None
        pod_uid, qos = cls.pod_uid, cls.qos_class
        init: ProcessInfo | None = None
        if state is not None:
            if cls.kind is not WorkloadKind.CONTAINER:
                runtime, cid, name = state.runtime, state.id, state.id
            elif state.source == "runc:moby" and cls.role == Role.CONTAINER and runtime in (
                "containerd",
            ):
                runtime = "docker"  # a bare id under a pod, run by docker (cri-dockerd)
            if state.annotations.get(_MANAGER) == "libpod":
                runtime = "podman"
            labels.update(state.annotations)
            if state.bundle:
                labels["bundle"] = state.bundle
            if state.created:
                labels["created"] = state.created
            ann = state.annotations
            pod_name = _first(ann, _K8S_POD)
            namespace = _first(ann, _K8S_NAMESPACE)
            pod_uid = pod_uid or _first(ann, _K8S_POD_UID)
            image = _first(ann, _K8S_IMAGE)
            if _first(ann, _K8S_TYPE) == "sandbox":
                name = "POD"
            else:
                container = _first(ann, _K8S_CONTAINER)
                name = container or name
            init = self._alive(state, procs)
        if init is None:
            init = _oldest(own, host) or _oldest(_subtree(path, by_cgroup), host)
        return WorkloadIdentity(
            id=cid or path,
            kind=WorkloadKind.CONTAINER,
            runtime=runtime,
            name=name,
            cgroup=path,
            inode=inode,
            pod_name=pod_name,
            pod_uid=pod_uid,
            namespace=namespace,
            qos_class=qos,
            init_pid=init.pid if init is not None else None,
            namespaces=_ns_inodes(init) if init is not None else MappingProxyType({}),
            labels=MappingProxyType(labels),
            image=image,
            container_name=container,
        )


def _isolated(p: ProcessInfo, host: Mapping[str, NamespaceId]) -> bool:
    """True when p lives in a pid or mnt namespace other than the host's (unreadable: no).

    Kernel threads (kthreadd's children) do not count: kdevtmpfs has a mount namespace of its own.
    """
    if p.pid == 2 or p.ppid == 2:
        return False
    return any(_differs(p, host, kind) for kind in _ISOLATING)


def _differs(p: ProcessInfo, host: Mapping[str, NamespaceId], kind: str) -> bool:
    mine, theirs = p.namespaces.get(kind), host.get(kind)
    return mine is not None and theirs is not None and mine != theirs


def _oldest(procs: list[ProcessInfo], host: Mapping[str, NamespaceId]) -> ProcessInfo | None:
    """The container's init: the earliest-started process, preferring isolated ones (a
    launcher such as `unshare` stays in the host's namespaces beside its child)."""
    if not procs:
        return None

    def rank(p: ProcessInfo) -> tuple[bool, bool, int, int]:
        # `unshare --pid --mount --fork` itself gets the new mnt namespace but stays in the
        # host's pid namespace: the process in the new pid namespace is the container's init.
        in_own_pid = _differs(p, host, "pid")
        return (not in_own_pid, not _isolated(p, host), p.start_ticks, p.pid)

    return min(procs, key=rank)


def _subtree(path: str, by_cgroup: Mapping[str, list[ProcessInfo]]) -> list[ProcessInfo]:
    prefix = path.rstrip("/") + "/"
    return [p for cg, ps in by_cgroup.items() if cg.startswith(prefix) for p in ps]


def _ns_inodes(p: ProcessInfo) -> Mapping[str, int]:
    return MappingProxyType({k: v.ino for k, v in p.namespaces.items()})
