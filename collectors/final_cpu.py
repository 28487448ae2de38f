"""A cgroup2 cgroup's CPU usage at its rmdir, kept by an eBPF program (bpf/final_cpu.bpf.c).

A runtime may remove a cgroup microseconds after it empties (systemd removes a scope at once,
a churn of short jobs does too): sooner than any reader in user space sees `populated 0`, and
after the rmdir the cgroup's cpu.stat is gone. The program runs inside the rmdir (tracepoint
cgroup:cgroup_rmdir) and keeps the kernel's counter as cpu.stat would show it, by cgroup id
(= the directory's inode on 64-bit kernels), in an LRU map of 16,384 entries; `take()` reads
and removes one entry.

Loaded with libbpf (libbpf.so.1, through ctypes: a handful of its stable calls) from the CO-RE
object `make` builds next to the source. Needs root (CAP_BPF and CAP_PERFMON), the kernel's
BTF (/sys/kernel/btf/vmlinux) and a cgroup2 hierarchy; where any of it is missing, open()
raises ProbeUnavailable with the reason, and the agent runs without it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from dataclasses import dataclass
from pathlib import Path

#: The object `make` builds (collectors/bpf/build.sh).
DEFAULT_OBJECT = Path(__file__).parent / "bpf" / "final_cpu.bpf.o"


#: The path map's key size (PATH_KEY in bpf/final_cpu.bpf.c): longer paths are cut there.
PATH_KEY = 512


class ProbeUnavailable(Exception):
    """The probe cannot run here; str() says why, in one line."""


@dataclass(frozen=True, slots=True)
class RmdirCpu:
    #: The kernel's CPU time of the cgroup at the rmdir, in ns (cpu.stat shows it / 1000).
    usage_ns: int
    #: CLOCK_MONOTONIC ns of the rmdir.
    at_ns: int

    @property
    def usage_usec(self) -> int:
        """usage_usec as cpu.stat would have shown it at the rmdir."""
        return self.usage_ns // 1000


class _Value(ctypes.Structure):
    _fields_ = (("usage_ns", ctypes.c_uint64), ("at_ns", ctypes.c_uint64))


def _libbpf() -> ctypes.CDLL:
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError:
        raise ProbeUnavailable("libbpf not installed (Debian: libbpf1)") from None
    vp, cp, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    for fn, res, args in (
        ("bpf_object__open_file", vp, [cp, vp]),
        ("bpf_object__load", i, [vp]),
        ("bpf_object__close", None, [vp]),
        ("bpf_object__find_program_by_name", vp, [vp, cp]),
        ("bpf_object__find_map_fd_by_name", i, [vp, cp]),
        ("bpf_program__attach", vp, [vp]),
        ("bpf_link__destroy", i, [vp]),
        ("libbpf_set_print", vp, [vp]),
    ):
        try:
            f = getattr(lib, fn)
        except AttributeError:
            raise ProbeUnavailable(f"libbpf too old: no {fn} (libbpf 1.x needed)") from None
        f.restype, f.argtypes = res, args
    lib.libbpf_set_print(None)  # failures are reported by errno, in one line
    return lib


def _map_ops(lib: ctypes.CDLL) -> ctypes.PyDLL:
    """The map lookups, through a handle that keeps the GIL: a lookup is a syscall of
    microseconds, and a thread that lets the GIL go for it waits to get it back behind the
    caller's busy threads (the agent's event loop asks at every removed cgroup)."""
    ops = ctypes.PyDLL(lib._name, use_errno=True)
    vp, i = ctypes.c_void_p, ctypes.c_int
    for fn, args in (("bpf_map_lookup_elem", [i, vp, vp]), ("bpf_map_delete_elem", [i, vp])):
        try:
            f = getattr(ops, fn)
        except AttributeError:
            raise ProbeUnavailable(f"libbpf too old: no {fn} (libbpf 1.x needed)") from None
        f.restype, f.argtypes = i, args
    return ops


class RmdirCpuProbe:
    """The loaded and attached program and its map; close() detaches it."""

    def __init__(self, lib: ctypes.CDLL, ops: ctypes.PyDLL, obj: int, link: int, map_fd: int,
                 path_map_fd: int) -> None:
        self._lib, self._ops, self._link, self._map_fd = lib, ops, link, map_fd
        self._path_map_fd = path_map_fd
        self._obj: int | None = obj
        #: Entries taken (tests read it).
        self.taken = 0

    @classmethod
    def open(cls, obj_path: Path = DEFAULT_OBJECT) -> RmdirCpuProbe:
        """Load and attach; ProbeUnavailable (with the reason) where it cannot run."""
        if not obj_path.exists():
            raise ProbeUnavailable(f"{obj_path.name} not built (make builds it: clang, bpftool, "
                                   "libbpf-dev)")
        if not os.path.exists("/sys/kernel/btf/vmlinux"):
            raise ProbeUnavailable("the kernel has no BTF (CONFIG_DEBUG_INFO_BTF)")
        lib = _libbpf()
        ops = _map_ops(lib)
        obj = lib.bpf_object__open_file(str(obj_path).encode(), None)
        if not obj:
            raise ProbeUnavailable(f"cannot open {obj_path.name}: {_err()}")
        try:
            rc = lib.bpf_object__load(obj)
            if rc != 0:
                raise ProbeUnavailable(f"the kernel refused the program: {_err(-rc)}")
            prog = lib.bpf_object__find_program_by_name(obj, b"on_rmdir")
            link = lib.bpf_program__attach(prog) if prog else None
            if not link:
                raise ProbeUnavailable(f"cannot attach to cgroup:cgroup_rmdir: {_err()}")
            map_fd = lib.bpf_object__find_map_fd_by_name(obj, b"final_cpu")
            path_map_fd = lib.bpf_object__find_map_fd_by_name(obj, b"id_by_path")
            if path_map_fd < 0:
                raise ProbeUnavailable(f"{obj_path.name} is out of date: rebuild it (make)")
        except BaseException:
            lib.bpf_object__close(obj)
            raise
        return cls(lib, ops, obj, link, map_fd, path_map_fd)

    def take(self, cgroup_id: int) -> RmdirCpu | None:
        """The counter kept at the rmdir of the cgroup whose directory had inode `cgroup_id`,
        removed from the map; None when there is none (yet)."""
        if self._obj is None:
            return None
        key = ctypes.c_uint64(cgroup_id)
        value = _Value()
        if self._ops.bpf_map_lookup_elem(self._map_fd, ctypes.byref(key), ctypes.byref(value)):
            return None
        self._ops.bpf_map_delete_elem(self._map_fd, ctypes.byref(key))
        self.taken += 1
        return RmdirCpu(value.usage_ns, value.at_ns)

    def id_by_path(self, path: str) -> int | None:
        """The id of the cgroup last removed at `path` (from the cgroup2 root: "/a/b"), or
        None; its counter is then take(id). Nothing is removed here: whether that counter is
        still to be told is the caller's to say."""
        if self._obj is None:
            return None
        cgroup_id = ctypes.c_uint64()
        if self._ops.bpf_map_lookup_elem(self._path_map_fd, _path_key(path),
                                         ctypes.byref(cgroup_id)):
            return None
        return cgroup_id.value

    def close(self) -> None:
        if self._obj is None:
            return
        self._lib.bpf_link__destroy(self._link)
        self._lib.bpf_object__close(self._obj)
        self._obj = None

    def __enter__(self) -> RmdirCpuProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _path_key(path: str) -> ctypes.Array[ctypes.c_char]:
    """The path map's key: the path zero-padded, cut as the program cuts it."""
    key = (ctypes.c_char * PATH_KEY)()
    raw = os.fsencode(path)[: PATH_KEY - 1]
    ctypes.memmove(key, raw, len(raw))
    return key


def _err(code: int | None = None) -> str:
    code = ctypes.get_errno() if code is None else code
    if code == errno.EPERM:
        return "not permitted (needs root: CAP_BPF and CAP_PERFMON)"
    return os.strerror(code) if code else "unknown error"
