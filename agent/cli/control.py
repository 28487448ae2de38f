"""Control verbs: freeze, thaw, kill, checkpoint, restore, checkpoints, rm-checkpoint.

Progress goes to stderr as it arrives; the outcome is one line on stdout (or JSON with
--json). Exit codes: 0 done, 1 failed (nothing changed), 2 bad usage, 3 timed out and rolled
back, 4 agent unavailable, 5 not found, 6 refused (protected; --force overrides).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any
from urllib.parse import quote

from agent.cli.client import AgentClient, CliError
from agent.core.exit_codes import ExitCode

#: CRIU may run long without a progress line; the socket read must outlast it.
LONG_OP_S = 330.0


def _human_bytes(n: object) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    v = float(n)
    for unit in ("B", "K", "M", "G"):
        if v < 1024:
            return f"{v:.0f}{unit}" if unit == "B" else f"{v:.1f}{unit}"
        v /= 1024
    return f"{v:.1f}T"


def _show_details(details: dict[str, Any]) -> None:
    for t in details.get("stuck", [])[:20]:
        print(f"  not frozen: pid {t['pid']} tid {t['tid']} {t['comm']} state {t['state']} "
              f"wchan {t['wchan']}", file=sys.stderr)
    if details.get("criu_log"):
        print("  CRIU log (errors and the lines before them):", file=sys.stderr)
        for line in details["criu_log"]:
            print(f"    {line}", file=sys.stderr)
    if details.get("roots"):
        print(f"  process tree roots: {' '.join(map(str, details['roots']))}", file=sys.stderr)


def run_op(client: AgentClient, op: str, body: dict[str, Any], quiet: bool = False) -> Any:
    """POST a control operation, print its progress, return its result or raise CliError."""
    final: dict[str, Any] | None = None
    for raw in client.stream_lines("POST", f"/api/v1/control/{op}", body=body):
        try:
            msg = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(msg, dict):
            continue
        if "progress" in msg:
            if not quiet:
                print(f"  [{msg.get('t', 0):6.3f}s] {msg['progress']}", file=sys.stderr,
                      flush=True)
            continue
        final = msg
    if final is None:
        raise CliError(f"the agent ended the {op} without a result", ExitCode.FAILED)
    if "error" in final:
        if not quiet:
            _show_details(final.get("details") or {})
        raise CliError(str(final["error"]), int(final.get("exit_code", ExitCode.FAILED)))
    return final.get("result", {})


def _emit(args: argparse.Namespace, result: Any, line: str) -> int:
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print(line)
    return int(ExitCode.OK)


def _stretch(client: AgentClient, seconds: float) -> None:
    client.timeout = max(client.timeout, seconds)


def _how(r: dict[str, Any]) -> str:
    """"v1 freezer" for the cgroup path, "through docker" for an owner."""
    via = r.get("via", "cgroup")
    return f"{r['freezer']} freezer" if via == "cgroup" else f"through {via}"


def _freeze(args: argparse.Namespace, client: AgentClient) -> int:
    body: dict[str, Any] = {"target": args.target, "force": args.force,
                            "via_cgroup": args.via_cgroup}
    if args.op_timeout is not None:
        body["timeout"] = args.op_timeout
        _stretch(client, args.op_timeout + 30)
    if args.freezer:
        body["freezer"] = args.freezer
    r = run_op(client, "freeze", body, args.quiet)
    what = "already frozen" if r.get("unchanged") else "frozen"
    return _emit(args, r, f"{what}: {r['cgroup']} ({_how(r)}, "
                          f"{r['duration_s']:.3f} s)")


def _thaw(args: argparse.Namespace, client: AgentClient) -> int:
    body: dict[str, Any] = {"target": args.target, "via_cgroup": args.via_cgroup}
    if args.op_timeout is not None:
        body["timeout"] = args.op_timeout
        _stretch(client, args.op_timeout + 30)
    r = run_op(client, "thaw", body, args.quiet)
    if r.get("held_by"):
        print(f"agentctl: {r['cgroup']} stays frozen: an ancestor holds the freeze "
              f"({r['held_by']})", file=sys.stderr)
    what = "already running" if r.get("unchanged") else "thawed"
    return _emit(args, r, f"{what}: {r['cgroup']} ({_how(r)}, "
                          f"{r['duration_s']:.3f} s)")


def _kill(args: argparse.Namespace, client: AgentClient) -> int:
    body: dict[str, Any] = {"target": args.target, "force": args.force,
                            "via_cgroup": args.via_cgroup}
    if args.op_timeout is not None:
        body["timeout"] = args.op_timeout
        _stretch(client, args.op_timeout + 30)
    r = run_op(client, "kill", body, args.quiet)
    return _emit(args, r, f"killed {len(r['killed'])} process(es) in {r['cgroup']} "
                          f"({r['method']}, {r['duration_s']:.3f} s)")


def _checkpoint(args: argparse.Namespace, client: AgentClient) -> int:
    body: dict[str, Any] = {"target": args.target, "force": args.force,
                            "leave_running": args.leave_running,
                            "tcp_established": args.tcp_established}
    if args.export:
        body["export"] = os.path.abspath(args.export)
    _stretch(client, LONG_OP_S)
    r = run_op(client, "checkpoint", body, args.quiet)
    line = (f"checkpoint {r['id']}: {len(r['pids'])} process(es) of {r['cgroup']}, "
            f"{_human_bytes(r['images_bytes'])} in {r['duration_s']:.2f} s"
            f"{' (left running)' if r.get('left_running') else ''}")
    if r.get("export"):
        line += f"\nexported to {r['export']} ({_human_bytes(r.get('export_bytes'))})"
    return _emit(args, r, line)


def _restore(args: argparse.Namespace, client: AgentClient) -> int:
    body: dict[str, Any] = {"checkpoint": args.checkpoint}
    if args.cgroup:
        body["cgroup"] = args.cgroup
    _stretch(client, LONG_OP_S)
    r = run_op(client, "restore", body, args.quiet)
    pids = " ".join(str(p) for p in r["pids"])
    return _emit(args, r, f"restored {r['checkpoint']} into {r['cgroup']}: pids {pids} "
                          f"({r['duration_s']:.2f} s)")


def _checkpoints(args: argparse.Namespace, client: AgentClient) -> int:
    data = client.get("/api/v1/checkpoints")
    if args.json:
        json.dump(data, sys.stdout, indent=2)
        print()
        return int(ExitCode.OK)
    crit = data.get("criu") or {}
    if not crit.get("available"):
        print(f"agentctl: checkpoint/restore unavailable: {crit.get('error')}", file=sys.stderr)
    rows = [("ID", "TIME", "CGROUP", "PROCS", "SIZE", "RESTORES", "OPTIONS")]
    for c in data.get("checkpoints", []):
        opts = ",".join(k for k, v in sorted((c.get("options") or {}).items()) if v is True)
        rows.append((c["id"], str(c.get("time") or "-"), str(c.get("cgroup") or "-"),
                     str(c.get("processes", "-")), _human_bytes(c.get("bytes")),
                     str(c.get("restores", 0)), opts or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(widths[i]) for i, v in enumerate(r)).rstrip())
    return int(ExitCode.OK)


def _rm_checkpoint(args: argparse.Namespace, client: AgentClient) -> int:
    client.delete(f"/api/v1/checkpoints/{quote(args.id, safe='')}")
    print(f"removed checkpoint {args.id}")
    return int(ExitCode.OK)


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < v <= 300:
        raise argparse.ArgumentTypeError("must be > 0 and <= 300 seconds")
    return v


def _common(p: argparse.ArgumentParser, force: bool = True, timeout: bool = True) -> None:
    p.add_argument("target", help="container id or name, or a cgroup path starting with /")
    if force:
        p.add_argument("--force", action="store_true",
                       help="act even on protected cgroups (root, the agent's, init.scope, ...)")
    if timeout:
        p.add_argument("--timeout", dest="op_timeout", type=_positive, default=None,
                       metavar="S", help="seconds before giving up (default: [control] "
                       "freeze_timeout, 10)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")


def _owner_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cgroup", dest="via_cgroup", action="store_true",
                   help="act on the cgroup file directly, not through the owner (docker, "
                   "podman, LXC, systemd)")


def register(sub: Any) -> None:
    p = sub.add_parser("freeze", help="freeze a container or cgroup (rolled back on timeout)")
    _common(p)
    p.add_argument("--freezer", choices=("auto", "v1", "v2"), default=None,
                   help="which freezer (default: [control] freezer, auto); implies --cgroup")
    _owner_flag(p)
    p.set_defaults(func=_freeze)

    p = sub.add_parser("thaw", help="thaw a container or cgroup (never refused)")
    _common(p, force=False)
    _owner_flag(p)
    p.set_defaults(func=_thaw)

    p = sub.add_parser("kill", help="SIGKILL every process of a container or cgroup")
    _common(p)
    _owner_flag(p)
    p.set_defaults(func=_kill)

    p = sub.add_parser("checkpoint", help="checkpoint a container's process tree with CRIU")
    _common(p, timeout=False)
    p.add_argument("--leave-running", action="store_true",
                   help="keep the workload running after the dump")
    p.add_argument("--tcp-established", action="store_true",
                   help="dump established TCP connections (locked during the dump)")
    p.add_argument("--export", metavar="FILE.tar", help="also write the checkpoint as a tar")
    p.set_defaults(func=_checkpoint)

    p = sub.add_parser("restore", help="restore a checkpoint (original cgroup or --cgroup)")
    p.add_argument("checkpoint", help="checkpoint id (see `agentctl checkpoints`)")
    p.add_argument("--cgroup", metavar="PATH", help="restore into this cgroup instead")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=_restore)

    p = sub.add_parser("checkpoints", help="list checkpoints")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_checkpoints)

    p = sub.add_parser("rm-checkpoint", help="remove a checkpoint")
    p.add_argument("id", help="checkpoint id")
    p.set_defaults(func=_rm_checkpoint)
