"""agentctl events [--follow] [--type T] [--container C] [--since ID] [--limit N] [--json]."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from agent.cli.client import AgentClient, CliError
from agent.core.exit_codes import ExitCode

#: Seconds between reconnection attempts of --follow after the agent went away.
RECONNECT_S = 1.0


def _nonnegative(v: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {v!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {v}")
    return n


def _positive(v: str) -> int:
    n = _nonnegative(v)
    if n == 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return n


def _local_time(doc: dict[str, Any]) -> str:
    ts = datetime.fromtimestamp(int(doc["ts_ns"]) / 1e9, tz=UTC).astimezone()
    return ts.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def format_line(doc: dict[str, Any]) -> str:
    """One event as a human line: id, time, type, severity, container, fields."""
    c = doc.get("container") or {}
    who = c.get("name") or c.get("id") or "-"
    if c.get("cgroup") and c.get("cgroup") != who:
        who = f"{who} ({c['cgroup']})"
    fields = " ".join(f"{k}={v}" for k, v in (doc.get("fields") or {}).items() if v is not None)
    return (f"{doc['id']:>6}  {_local_time(doc)}  {doc['type']:<17} {doc['severity']:<7} "
            f"{who}  {fields}").rstrip()


def parse_sse(lines: Iterator[bytes]) -> Iterator[dict[str, Any]]:
    """Event documents from Server-Sent Events lines (comments and retry: skipped)."""
    data: list[str] = []
    for raw in lines:
        line = raw.decode(errors="replace").rstrip("\r\n")
        if not line:
            if data:
                yield json.loads("\n".join(data))
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))


def _print(doc: dict[str, Any], as_json: bool) -> None:
    print(json.dumps(doc) if as_json else format_line(doc), flush=True)


def _params(args: argparse.Namespace) -> dict[str, Any]:
    return {"type": args.type, "container": args.container}


def _follow(args: argparse.Namespace, client: AgentClient) -> int:
    since: int | None = args.since
    connected_once = False
    while True:
        params = {**_params(args), "since": since}
        try:
            for doc in parse_sse(client.stream_lines("GET", "/api/v1/events/stream", params)):
                connected_once = True
                _print(doc, args.json)
                since = int(doc["id"])
            connected_once = True
        except CliError as e:
            # A restart of the agent: resume from the last id seen, like an EventSource.
            if not connected_once or e.exit_code != ExitCode.UNAVAILABLE:
                raise
        except (OSError, ValueError) as e:
            if not connected_once:
                raise CliError(f"event stream failed: {e}", ExitCode.FAILED) from None
        if since is None:
            since = _last_id(client)
        time.sleep(RECONNECT_S)


def _last_id(client: AgentClient) -> int | None:
    try:
        doc = client.get("/api/v1/events", {"limit": 1})
    except CliError:
        return None
    return int(doc.get("last_id", 0))


def cmd_events(args: argparse.Namespace, client: AgentClient) -> int:
    if args.follow:
        return _follow(args, client)
    doc = client.get("/api/v1/events", {**_params(args), "since": args.since,
                                        "limit": args.limit})
    if args.json:
        json.dump(doc, sys.stdout)
        sys.stdout.write("\n")
        return int(ExitCode.OK)
    for event in doc.get("events", []):
        _print(event, False)
    return int(ExitCode.OK)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "events", help="the event log: lifecycle, OOM kills, limits hit, pressure, control",
        description="Show stored events (the latest --limit, or those after --since), or "
        "follow them live with --follow (resumes after an agent restart).",
    )
    p.add_argument("-f", "--follow", action="store_true", help="stream events as they happen")
    p.add_argument("--type", help="only these types (comma-separated), e.g. oom_kill,pids_max")
    p.add_argument("--container", help="container id (or 12+ char prefix), name or cgroup path")
    p.add_argument("--since", type=_nonnegative, help="only events after this event id")
    p.add_argument("--limit", type=_positive, default=100, help="at most N events (default 100)")
    p.add_argument("--json", action="store_true",
                   help="JSON (with --follow: one event document per line)")
    p.set_defaults(func=cmd_events)
