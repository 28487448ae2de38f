"""Checkpoint and restore a cgroup's process tree with CRIU.

- Which CRIU: `[control] criu_path` when set; else the system `criu` if `criu check` passes,
  else the private CRIU 4.x that tests/setup/install-criu.sh unpacks (DEFAULT_PRIVATE_CRIU).
- Dump: the cgroup's processes must form one tree (else refused, listing the roots). CRIU
  freezes the cgroup itself (`--freeze-cgroup`, with the freezer `choose_freezer` picks),
  seizes the tasks and puts the freezer back as it found it. On failure CRIU unseizes the
  tasks; we check they still run, thaw what is still frozen, and quote CRIU's log.
- Restore: criu is started through `sh`, which first joins the target cgroups (original or
  given) in every hierarchy, so the restored tree is born there (`--manage-cgroups=ignore`
  keeps CRIU from moving it back). PIDs are restored as they were: the original must be gone.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.control import freeze_v1, freeze_v2
from agent.control.checkpoints import CheckpointStore, dir_bytes, export_tar
from agent.control.errors import ControlError
from agent.control.freeze_v2 import Progress, no_progress
from agent.control.operations import Policy, choose_freezer
from agent.control.protect import check_allowed
from agent.control.targets import (
    Target,
    normalize_rel,
    safe_dir,
    subtree_pids,
    target_from_dirs,
    v1_rel,
)
from agent.core.exit_codes import ExitCode
from collectors.layout import CgroupLayout

DEFAULT_PRIVATE_CRIU = Path("/opt/container-agent/criu/criu")
_RUN_TIMEOUT_S = 300.0


@dataclass(frozen=True, slots=True)
class CriuInfo:
    path: str | None
    version: str | None
    ok: bool
    error: str | None = None

    def as_fact(self) -> dict[str, object]:
        return {"available": self.ok, "path": self.path, "version": self.version,
                "error": self.error}


def _run(argv: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        check=False,
    )


def probe(path: str) -> CriuInfo:
    """`criu --version` and `criu check` for one candidate."""
    try:
        ver = _run([path, "--version"])
    except (OSError, subprocess.TimeoutExpired) as e:
        return CriuInfo(path, None, False, f"cannot run {path}: {e}")
    m = re.search(r"Version:\s*(\S+)", ver.stdout)
    version = m.group(1) if m else None
    try:
        chk = _run([path, "check"], timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return CriuInfo(path, version, False, f"criu check did not finish: {e}")
    if chk.returncode != 0:
        lines = [ln for ln in (chk.stdout + chk.stderr).splitlines() if ln.strip()]
        errors = [ln for ln in lines if "Error" in ln] or lines
        return CriuInfo(path, version, False, "criu check failed: " + " | ".join(errors[-3:]))
    return CriuInfo(path, version, True)


def find_criu(configured: str = "") -> CriuInfo:
    """The configured CRIU, or the first working of: system criu, the private CRIU."""
    if configured:
        return probe(configured)
    tried: list[CriuInfo] = []
    system = shutil.which("criu")
    for cand in (system, str(DEFAULT_PRIVATE_CRIU)):
        if cand is None or not os.access(cand, os.X_OK):
            continue
        info = probe(cand)
        if info.ok:
            return info
        tried.append(info)
    if not tried:
        return CriuInfo(None, None, False, "no criu found (run tests/setup/install-criu.sh)")
    return CriuInfo(
        tried[0].path, tried[0].version, False,
        "; ".join(f"{t.path} {t.version or ''}: {t.error}" for t in tried),
    )


def log_excerpt(log: Path, before: int = 3, limit: int = 30) -> list[str]:
    """Lines containing "Error" with a few lines before each, as runc quotes CRIU's log."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    keep: set[int] = set()
    for i, line in enumerate(lines):
        if "Error" in line:
            keep.update(range(max(0, i - before), i + 1))
    return [lines[i] for i in sorted(keep)][-limit:]


def _error_summary(excerpt: list[str]) -> str:
    """The last few Error lines without their timestamps and source locations."""
    prefix = re.compile(r"^(\([\d.]+\)\s*)?Error \([^)]*\):\s*")
    msgs = [prefix.sub("", ln) for ln in excerpt if "Error" in ln]
    return "; ".join(msgs[-3:]) if msgs else "no error lines in CRIU's log"


def _proc_info(pid: int) -> dict[str, object] | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    return {
        "pid": pid,
        "ppid": int(fields.get("PPid", "0").strip()),
        "comm": fields.get("Name", "").strip(),
        "cmdline": [a.decode(errors="replace") for a in cmdline.split(b"\0") if a],
    }


def process_tree(target: Target) -> tuple[int, list[dict[str, object]]]:
    """The single root and every process; ControlError when empty or more than one tree."""
    infos = [i for i in (_proc_info(p) for p in sorted(subtree_pids(target.ref_dir))) if i]
    if not infos:
        raise ControlError(f"{target.cgroup}: no processes to checkpoint")
    pids = {i["pid"] for i in infos}
    roots = [i for i in infos if i["ppid"] not in pids]
    if len(roots) != 1:
        listed = ", ".join(f"{r['pid']} ({r['comm']})" for r in roots)
        raise ControlError(
            f"{target.cgroup}: processes form {len(roots)} trees, not one; roots: {listed}",
            ExitCode.FAILED,
            {"roots": [r["pid"] for r in roots]},
        )
    root = roots[0]["pid"]
    assert isinstance(root, int)
    return root, infos


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _freezer_snapshot(name: str, d: Path) -> bool:
    return freeze_v2.requested(d) if name == "v2" else freeze_v1.read_state(d) != "THAWED"


def _ensure_thawed(name: str, d: Path, was_frozen: bool, layout: CgroupLayout) -> None:
    """After a failed dump: leave the freezer as the workload had it before."""
    if was_frozen:
        return
    with contextlib.suppress(ControlError, OSError):
        if name == "v2" and layout.unified is not None and _freezer_snapshot(name, d):
            freeze_v2.thaw(d, layout.unified, 5.0)
        elif name == "v1" and _freezer_snapshot(name, d):
            freeze_v1.thaw(d, 5.0)


def checkpoint(
    criu: CriuInfo,
    target: Target,
    layout: CgroupLayout,
    policy: Policy,
    store: CheckpointStore,
    *,
    leave_running: bool = False,
    tcp_established: bool = False,
    export: Path | None = None,
    force: bool = False,
    freezer: str | None = None,
    network_lock: str = "",
    progress: Progress = no_progress,
) -> dict[str, object]:
    if not criu.ok or criu.path is None:
        raise ControlError(f"checkpoint unavailable: {criu.error}", ExitCode.FAILED)
    if export is not None and (not export.is_absolute() or export.exists()):
        raise ControlError(f"export path must be absolute and new: {export}", ExitCode.USAGE)
    if not force:  # the root first: it has no freezer to choose
        check_allowed(target, [], policy.protected, agent_pid=policy.agent_pid,
                      verb="checkpoint")
    name, fdir = choose_freezer(target, layout, freezer or policy.freezer)
    if not force:
        check_allowed(target, target.dirs(), policy.protected, agent_pid=policy.agent_pid,
                      verb="checkpoint")
    root, procs = process_tree(target)
    progress(f"process tree: root {root}, {len(procs)} process(es)")
    cid, d = store.create()
    opts: dict[str, object] = {"leave_running": leave_running,
                               "tcp_established": tcp_established, "freezer": name}
    argv = [criu.path, "dump", "-t", str(root), "-D", str(d / "images"), "-W", str(d),
            "-o", "dump.log", "-v4", "--freeze-cgroup", str(fdir),
            "--timeout", str(max(1, math.ceil(policy.timeout_s)))]
    if leave_running:
        argv.append("--leave-running")
    if tcp_established:
        argv.append("--tcp-established")
        if network_lock:
            argv += ["--network-lock", network_lock]
            opts["network_lock"] = network_lock
    was_frozen = _freezer_snapshot(name, fdir)
    progress(f"criu {criu.version} dump with --freeze-cgroup {fdir} ({name} freezer)")
    start = time.monotonic()
    try:
        res = _run(argv, timeout=_RUN_TIMEOUT_S)
        rc, out = res.returncode, res.stderr
    except subprocess.TimeoutExpired:
        rc, out = -1, f"criu dump did not finish in {_RUN_TIMEOUT_S:g} s"
    duration = time.monotonic() - start
    if rc != 0:
        excerpt = log_excerpt(d / "dump.log")
        _ensure_thawed(name, fdir, was_frozen, layout)
        running = [p for p in (int(str(i["pid"])) for i in procs) if _alive(p)]
        store.discard(d)
        raise ControlError(
            f"criu dump failed: {_error_summary(excerpt) if excerpt else out.strip()[-300:]}; "
            f"workload {'still running' if running else 'NOT running'} "
            f"({len(running)}/{len(procs)} processes)",
            ExitCode.FAILED,
            {"criu_log": excerpt, "still_running": running, "duration_s": duration},
        )
    cgroups = {"reference": target.cgroup}
    cgroups.update({ctrl: v1_rel(layout, ctrl, p) for ctrl, p in target.v1.items()})
    who = target.identity
    meta: dict[str, Any] = {
        "id": cid,
        "target": target.ref,
        "cgroup": target.cgroup,
        "cgroups": cgroups,
        "workload": None if who is None else {"id": who.id, "name": who.name,
                                              "runtime": who.runtime, "kind": str(who.kind)},
        "root_pid": root,
        "processes": procs,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "criu": {"path": criu.path, "version": criu.version},
        "options": opts,
        "duration_s": round(duration, 6),
        "images_bytes": dir_bytes(d / "images"),
        "restores": [],
    }
    store.save(d, meta)
    progress(f"checkpoint {cid}: {meta['images_bytes']} bytes of images in {duration:.2f} s")
    result: dict[str, object] = {k: meta[k] for k in ("id", "target", "cgroup", "root_pid",
                                                      "duration_s", "images_bytes")}
    result["path"] = str(d)
    result["pids"] = [i["pid"] for i in procs]
    result["left_running"] = leave_running
    if export is not None:
        progress(f"exporting to {export}")
        result["export"] = str(export)
        result["export_bytes"] = export_tar(d, export)
    return result


def restore_target(
    layout: CgroupLayout, meta: dict[str, Any], cgroup: str | None
) -> Target:
    """The cgroups to restore into: the recorded ones, or `cgroup` (same path in v1 trees)."""
    if cgroup is None:
        recorded = meta.get("cgroups") or {}
        rel = str(recorded.get("reference") or meta.get("cgroup") or "")
        v1 = {k: str(v) for k, v in recorded.items() if k != "reference"}
        try:
            return target_from_dirs(str(meta.get("id")), layout, rel, v1)
        except ControlError as e:
            raise ControlError(
                f"original cgroup is gone ({e.message}); restore with --cgroup PATH",
                e.exit_code,
            ) from None
    rel = normalize_rel(cgroup)
    v1_found: dict[str, str] = {}
    for ctrl, root in layout.v1.items():
        with contextlib.suppress(ControlError):
            safe_dir(root, rel)
            v1_found[ctrl] = rel
    return target_from_dirs(cgroup, layout, rel, v1_found)


_JOIN = ('n=$1; shift; i=0; while [ "$i" -lt "$n" ]; do echo $$ > "$1" || exit 97; '
         'shift; i=$((i+1)); done; exec "$@"')


def _descendants(root: int, pids: set[int]) -> list[int]:
    ppid: dict[int, int] = {}
    for p in pids:
        info = _proc_info(p)
        if info is not None:
            ppid[p] = int(str(info["ppid"]))
    out = []
    for p in sorted(pids):
        cur, hops = p, 0
        while cur in ppid and cur != root and hops < 64:
            cur, hops = ppid[cur], hops + 1
        if cur == root:
            out.append(p)
    return out


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].startswith("Z")


def _wait_pids_free(pids: list[int], progress: Progress, timeout: float = 5.0) -> None:
    """CRIU restores the original PIDs: wait briefly for exited ones to be reaped."""
    deadline = time.monotonic() + timeout
    said = False
    while True:
        busy = [p for p in pids if Path(f"/proc/{p}").exists()]
        if not busy:
            return
        if time.monotonic() >= deadline:
            info = _proc_info(busy[0])
            who = f" ({info['comm']})" if info else ""
            zombie = _is_zombie(busy[0])
            why = ("is a zombie its parent has not reaped" if zombie else
                   "is in use (checkpoint taken with --leave-running? the original must be "
                   "gone)")
            raise ControlError(
                f"pid {busy[0]}{who} {why}: CRIU restores the checkpointed PIDs",
                ExitCode.FAILED,
                {"busy_pids": busy},
            )
        if not said:
            progress(f"waiting for pid(s) {busy} to be released")
            said = True
        time.sleep(0.02)


def restore(
    criu: CriuInfo,
    store: CheckpointStore,
    cid: str,
    layout: CgroupLayout,
    *,
    cgroup: str | None = None,
    progress: Progress = no_progress,
) -> dict[str, object]:
    if not criu.ok or criu.path is None:
        raise ControlError(f"restore unavailable: {criu.error}", ExitCode.FAILED)
    meta = store.load(cid)
    d = store.path(cid)
    target = restore_target(layout, meta, cgroup)
    procs_files = [str(x / "cgroup.procs") for x in target.dirs()]
    opts = meta.get("options") or {}
    argv = ["sh", "-c", _JOIN, "sh", str(len(procs_files)), *procs_files,
            criu.path, "restore", "-D", str(d / "images"), "-W", str(d), "-o", "restore.log",
            "-v4", "-d", "--manage-cgroups=ignore", "--pidfile", str(d / "restore.pid")]
    if opts.get("tcp_established"):
        argv.append("--tcp-established")
        if opts.get("network_lock"):
            argv += ["--network-lock", str(opts["network_lock"])]
    _wait_pids_free([int(str(p["pid"])) for p in meta.get("processes", [])], progress)
    before = set(subtree_pids(target.ref_dir))
    progress(f"criu {criu.version} restore of {cid} into {target.cgroup}")
    start = time.monotonic()
    with contextlib.suppress(FileNotFoundError):
        (d / "restore.pid").unlink()
    try:
        res = _run(argv, timeout=_RUN_TIMEOUT_S)
        rc, out = res.returncode, res.stderr
    except subprocess.TimeoutExpired:
        rc, out = -1, f"criu restore did not finish in {_RUN_TIMEOUT_S:g} s"
    duration = time.monotonic() - start
    if rc == 97:
        raise ControlError(f"cannot join the target cgroups: {out.strip()[-300:]}")
    if rc != 0:
        excerpt = log_excerpt(d / "restore.log")
        raise ControlError(
            f"criu restore failed: {_error_summary(excerpt) if excerpt else out.strip()[-300:]}",
            ExitCode.FAILED,
            {"criu_log": excerpt, "duration_s": duration},
        )
    try:
        root = int((d / "restore.pid").read_text().strip())
    except (OSError, ValueError):
        root = int(str(meta.get("root_pid", 0)))
    now = set(subtree_pids(target.ref_dir))
    pids = _descendants(root, now - before) or sorted(now - before)
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "cgroup": target.cgroup, "root_pid": root, "pids": pids,
              "duration_s": round(duration, 6)}
    meta.setdefault("restores", []).append(record)
    store.save(d, meta)
    progress(f"restored {len(pids)} process(es), root pid {root}, in {duration:.2f} s")
    return {"checkpoint": cid, "cgroup": target.cgroup, "root_pid": root, "pids": pids,
            "duration_s": round(duration, 6)}
