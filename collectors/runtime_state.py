"""State files of OCI runtimes: runc (`<root>/<id>/state.json`) and crun (`<root>/<id>/status`).

They give what a cgroup path cannot: the container's init pid (with its start time, to spot a
stale state whose pid was reused), bundle, configured cgroup path and OCI annotations. Every
file may be missing, half-written or garbage: such an entry is skipped, never an exception.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

EMPTY: Mapping[str, str] = MappingProxyType({})

#: Root directory -> runtime name. A key "runtime:where" reads as runtime "runtime"; docker
#: and containerd run runc with their own roots, whose annotations carry pod names.
DEFAULT_RUNTIME_ROOTS: Mapping[str, Path] = MappingProxyType(
    {
        "runc": Path("/run/runc"),
        "crun": Path("/run/crun"),
        "runc:moby": Path("/run/docker/runtime-runc/moby"),
        "runc:k8s.io": Path("/run/containerd/runc/k8s.io"),
        "runc:default": Path("/run/containerd/runc/default"),
    }
)

#: A state file larger than this is not a state file.
_MAX_BYTES = 8 << 20


@dataclass(frozen=True)
class RuntimeState:
    runtime: str
    id: str
    init_pid: int | None
    bundle: str | None
    #: The configured cgroup path (runc cgroups.path, crun cgroup-path), as the runtime wrote it.
    cgroup_path: str | None
    annotations: Mapping[str, str]
    created: str | None
    #: Start time (clock ticks since boot) of init_pid when the runtime recorded it.
    init_start_ticks: int | None = None
    #: Absolute cgroup directories per hierarchy ("" = cgroup2), when the runtime recorded them.
    cgroup_paths: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    #: Where the runtime's state lives (the root key, e.g. "runc:k8s.io").
    source: str = ""


def _load_json(path: Path) -> Any:
    with open(path, "rb") as f:
        data = f.read(_MAX_BYTES + 1)
    if len(data) > _MAX_BYTES:
        raise ValueError("too large")
    return json.loads(data)


def _opt_int(v: object) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v if v > 0 else None
    if isinstance(v, str) and v.isdigit():
        return int(v) or None
    return None


def _opt_str(v: object) -> str | None:
    return v if isinstance(v, str) and v else None


def _str_map(v: object) -> dict[str, str]:
    if not isinstance(v, dict):
        return {}
    return {str(k): str(x) for k, x in v.items() if isinstance(x, (str, int, float, bool))}


def parse_runc_state(doc: object, runtime: str = "runc", source: str = "") -> RuntimeState | None:
    """A runc state.json document -> RuntimeState (None when it is not one)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("id"), str) or not doc["id"]:
        return None
    config = doc.get("config")
    config = config if isinstance(config, dict) else {}
    bundle: str | None = None
    annotations: dict[str, str] = {}
    # runc keeps "bundle=<dir>" and every OCI annotation as "key=value" in config.labels.
    labels = config.get("labels")
    for item in labels if isinstance(labels, list) else []:
        if not isinstance(item, str) or "=" not in item:
            continue
        k, v = item.split("=", 1)
        if k == "bundle" and bundle is None:
            bundle = v
        else:
            annotations[k] = v
    cgroups = config.get("cgroups")
    cgroups = cgroups if isinstance(cgroups, dict) else {}
    cg_path = _opt_str(cgroups.get("path"))
    if cg_path is None and _opt_str(cgroups.get("name")):
        cg_path = f"{cgroups.get('parent') or ''}/{cgroups['name']}"
    return RuntimeState(
        runtime=runtime,
        id=doc["id"],
        init_pid=_opt_int(doc.get("init_process_pid")),
        bundle=bundle,
        cgroup_path=cg_path,
        annotations=MappingProxyType(annotations),
        created=_opt_str(doc.get("created")),
        init_start_ticks=_opt_int(doc.get("init_process_start")),
        cgroup_paths=MappingProxyType(_str_map(doc.get("cgroup_paths"))),
        source=source,
    )


def parse_crun_status(
    cid: str, doc: object, config: object, runtime: str = "crun", source: str = ""
) -> RuntimeState | None:
    """A crun `status` document (+ its saved config.json) -> RuntimeState."""
    if not isinstance(doc, dict) or not cid:
        return None
    annotations: dict[str, str] = {}
    if isinstance(config, dict):
        annotations = _str_map(config.get("annotations"))
    cg = _opt_str(doc.get("cgroup-path"))
    return RuntimeState(
        runtime=runtime,
        id=cid,
        init_pid=_opt_int(doc.get("pid")),
        bundle=_opt_str(doc.get("bundle")),
        cgroup_path=cg,
        annotations=MappingProxyType(annotations),
        created=_opt_str(doc.get("created")),
        init_start_ticks=_opt_int(doc.get("process-start-time")),
        source=source,
    )


def read_state_dir(cdir: Path, runtime: str, source: str = "") -> RuntimeState | None:
    """One container's state directory, in whichever format it holds; None if unusable."""
    try:
        if (cdir / "state.json").is_file():
            return parse_runc_state(_load_json(cdir / "state.json"), runtime, source)
        if (cdir / "status").is_file():
            doc = _load_json(cdir / "status")
            config: object = None
            candidates = [cdir / "config.json"]
            bundle = doc.get("bundle") if isinstance(doc, dict) else None
            if isinstance(bundle, str) and bundle.startswith("/"):
                candidates.append(Path(bundle) / "config.json")
            for cfg in candidates:
                try:
                    config = _load_json(cfg)
                    break
                except (OSError, ValueError):
                    continue
            return parse_crun_status(cdir.name, doc, config, runtime, source)
    except (OSError, ValueError, AttributeError, TypeError):
        return None
    return None


#: Cache for read_runtime_states: state directory -> (file identity, parsed state).
StateCache = dict[Path, tuple[tuple[int, int, int], RuntimeState | None]]


def _file_key(cdir: Path) -> tuple[int, int, int] | None:
    for name in ("state.json", "status"):
        try:
            st = os.stat(cdir / name)
        except OSError:
            continue
        return (st.st_ino, st.st_mtime_ns, st.st_size)
    return None


def read_runtime_states(
    roots: Mapping[str, Path] = DEFAULT_RUNTIME_ROOTS,
    cache: StateCache | None = None,
) -> dict[str, RuntimeState]:
    """Container id -> state, over every root; missing roots and garbage entries are skipped.

    A root key "runc:k8s.io" names runtime "runc". The first root holding an id wins. With a
    `cache`, a state file is parsed again only when its inode, mtime or size changed.
    """
    out: dict[str, RuntimeState] = {}
    seen: set[Path] = set()
    for key, root in roots.items():
        runtime = key.split(":", 1)[0]
        try:
            with os.scandir(root) as it:
                names = sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
        except OSError:
            continue
        for name in names:
            cdir = root / name
            state: RuntimeState | None
            if cache is None:
                state = read_state_dir(cdir, runtime, key)
            else:
                fkey = _file_key(cdir)
                if fkey is None:
                    continue
                seen.add(cdir)
                hit = cache.get(cdir)
                if hit is not None and hit[0] == fkey:
                    state = hit[1]
                else:
                    state = read_state_dir(cdir, runtime, key)
                    cache[cdir] = (fkey, state)
            if state is not None and state.id not in out:
                out[state.id] = state
    if cache is not None:
        for gone in set(cache) - seen:
            del cache[gone]
    return out
