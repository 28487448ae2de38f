"""Read verbs: ls, show, top, host, metrics."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from typing import Any
from urllib.parse import quote

from agent.cli.client import AgentClient, CliError
from agent.core.exit_codes import ExitCode

COLUMNS = (
    ("ID", 14), ("NAME", 28), ("RUNTIME", 10), ("IMAGE", 24), ("CPU", 6), ("MEM", 8), ("IO R/s", 8),
    ("IO W/s", 8), ("PIDS", 5), ("NET RX/s", 8), ("NET TX/s", 8), ("STATE", 7),
)


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}T"


def _cores(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _row(c: dict[str, Any]) -> list[str]:
    ident = c["id"] if c["kind"] == "container" else c["cgroup"]
    return [
        ident[:12] if c["kind"] == "container" else ident,
        c["name"] or "-",
        c["runtime"] or c["kind"],
        c.get("image") or "-",
        _cores(c.get("cpu_cores")),
        human_bytes(c.get("memory_bytes")),
        human_bytes(c.get("io_read_bytes_per_s")),
        human_bytes(c.get("io_write_bytes_per_s")),
        "-" if c.get("pids") is None else str(c["pids"]),
        human_bytes(c.get("net_rx_bytes_per_s")),
        human_bytes(c.get("net_tx_bytes_per_s")),
        c.get("state", "-"),
    ]


def render_table(rows: list[dict[str, Any]], width: int | None = None) -> str:
    cells = [[h for h, _ in COLUMNS]] + [_row(r) for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    widths[1] = min(widths[1], 40)
    widths[3] = min(widths[3], 40)
    lines = []
    for line in cells:
        parts = [v[: widths[i]].ljust(widths[i]) for i, v in enumerate(line)]
        lines.append("  ".join(parts).rstrip())
    text = "\n".join(lines)
    if width:
        text = "\n".join(line[:width] for line in text.splitlines())
    return text


def _kinds(args: argparse.Namespace) -> str | None:
    if args.all:
        return None
    return args.kind or "container,service"


def cmd_ls(args: argparse.Namespace, client: AgentClient) -> int:
    data = client.get("/api/v1/containers", {"kind": _kinds(args)})
    if args.json:
        json.dump(data["containers"], sys.stdout, indent=2)
        print()
        return 0
    print(render_table(data["containers"]))
    return 0


def cmd_show(args: argparse.Namespace, client: AgentClient) -> int:
    ref = args.target
    data = client.get("/api/v1/containers/" + quote(ref, safe=""))
    if args.json:
        json.dump(data, sys.stdout, indent=2)
        print()
        return 0
    print(format_detail(data))
    return 0


def format_detail(d: dict[str, Any]) -> str:
    lines = [
        f"id:        {d['id']}",
        f"name:      {d['name']}",
        f"kind:      {d['kind']}   runtime: {d['runtime'] or '-'}   state: {d['state']}",
        f"cgroup:    {d['cgroup']} (inode {d['inode']})",
    ]
    if d.get("image"):
        lines.append(f"image:     {d['image']}")
    if d.get("container_name"):
        lines.append(f"container: {d['container_name']}")
    if d.get("pod_name") or d.get("namespace"):
        lines.append(f"pod:       {d.get('namespace') or '-'}/{d.get('pod_name') or '-'} "
                     f"(uid {d.get('pod_uid') or '-'}, qos {d.get('qos_class') or '-'})")
    if d.get("init_pid"):
        lines.append(f"init pid:  {d['init_pid']}")
    for kind, ino in sorted((d.get("namespaces") or {}).items()):
        lines.append(f"ns {kind + ':':<17} {ino}")
    s = d.get("sample") or {}
    cpu, mem, pids = s.get("cpu") or {}, s.get("memory") or {}, s.get("pids") or {}
    lines.append(f"cpu:       {_cores(d.get('cpu_cores'))} cores, "
                 f"{(cpu.get('usage_usec') or 0) / 1e6:.3f} s total")
    lines.append(f"memory:    {human_bytes(mem.get('current'))} "
                 f"(working set {human_bytes(d.get('memory_working_set_bytes'))}, "
                 f"peak {human_bytes(mem.get('peak'))})")
    lines.append(f"pids:      {pids.get('current', '-')}")
    for dev in s.get("io") or []:
        lines.append(f"io {dev['device']}: read {human_bytes(dev.get('rbytes'))}, "
                     f"written {human_bytes(dev.get('wbytes'))}")
    net = d.get("network") or {}
    for iface in net.get("interfaces", []):
        lines.append(
            f"net {iface.get('name')}: rx {human_bytes(iface.get('rx_bytes'))} "
            f"tx {human_bytes(iface.get('tx_bytes'))}"
            + (f" (peer {iface['peer']})" if iface.get("peer") else "")
        )
    for k, v in sorted((d.get("labels") or {}).items()):
        lines.append(f"label {k}={v}")
    return "\n".join(lines)


def cmd_top(args: argparse.Namespace, client: AgentClient) -> int:
    sort_keys = {"cpu": "cpu_cores", "mem": "memory_bytes", "io": "io_read_bytes_per_s",
                 "pids": "pids"}
    key = sort_keys[args.sort]
    iterations = args.iterations
    interactive = sys.stdout.isatty() and not args.batch
    n = 0
    try:
        while True:
            data = client.get("/api/v1/containers", {"kind": _kinds(args)})
            rows = sorted(data["containers"], key=lambda c: c.get(key) or 0, reverse=True)
            if args.json:
                # One JSON document per refresh, one per line (NDJSON).
                print(json.dumps({"time": time.time(), "containers": rows}), flush=True)
                n += 1
                if iterations and n >= iterations:
                    return 0
                time.sleep(args.delay)
                continue
            size = shutil.get_terminal_size((120, 40))
            head = time.strftime("%H:%M:%S") + f"  {len(rows)} workloads  sorted by {args.sort}"
            table = render_table(rows[: max(size.lines - 3, 1)], size.columns)
            if interactive:
                sys.stdout.write("\x1b[H\x1b[2J" + head + "\n" + table + "\n")
            else:
                sys.stdout.write(head + "\n" + table + "\n\n")
            sys.stdout.flush()
            n += 1
            if iterations and n >= iterations:
                return 0
            time.sleep(args.delay)
    except KeyboardInterrupt:
        return 0


def cmd_host(args: argparse.Namespace, client: AgentClient) -> int:
    data = client.get("/api/v1/host")
    if args.json:
        json.dump(data, sys.stdout, indent=2)
        print()
    else:
        parts = data.pop("components", None)
        for k, v in data.items():
            print(f"{k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}")
        if parts is not None:
            print("components:")
            for p in parts:
                why = "; ".join(p["faults"])
                print(f"  {p['component']}: {'up' if p['up'] else 'DOWN'}"
                      + (f" ({why})" if why else ""))
    return 0


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return v


def register(sub: Any) -> None:
    def kind_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--all", action="store_true", help="every tracked cgroup, not only "
                       "containers and services")
        p.add_argument("--kind", help="comma-separated kinds: container, service, cgroup")

    p = sub.add_parser("ls", help="list containers")
    kind_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("show", help="one container: identity, usage, interfaces")
    p.add_argument("target", help="container id (or prefix), name, or cgroup path")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("top", help="live view, refreshing")
    kind_args(p)
    p.add_argument("--sort", choices=["cpu", "mem", "io", "pids"], default="cpu")
    p.add_argument("--delay", type=_positive, default=2.0, help="seconds between refreshes")
    p.add_argument("-n", "--iterations", type=int, default=0, help="stop after N refreshes")
    p.add_argument("--batch", action="store_true", help="no screen clearing")
    p.add_argument("--json", action="store_true", help="NDJSON: one document per refresh")
    p.set_defaults(func=cmd_top)

    p = sub.add_parser("host", help="host facts, cgroup layout, CRIU capability")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_host)


__all__ = ["CliError", "ExitCode", "register"]
