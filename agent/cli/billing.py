"""`agentctl billing export`: the ledger's rows (or group totals) as csv, jsonl or parquet."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from agent.cli.client import AgentClient, CliError
from agent.core.exit_codes import ExitCode
from agent.ledger.export import ExportError, check_group_by, parse_time


def cmd_export(args: argparse.Namespace, client: AgentClient) -> int:
    try:
        start = parse_time(args.from_, "--from")
        end = parse_time(args.to, "--to")
        group_by = check_group_by(args.group_by)
    except ExportError as e:
        raise CliError(str(e), ExitCode.USAGE) from None
    if end <= start:
        raise CliError("--to must be after --from", ExitCode.USAGE)
    if args.format == "parquet" and args.output is None and sys.stdout.isatty():
        raise CliError("parquet is binary: give --output FILE or redirect stdout",
                       ExitCode.USAGE)
    params: dict[str, Any] = {"from": start, "to": end, "format": args.format,
                              "group_by": group_by, "open": "1" if args.include_open else None}
    data = client.get_bytes("/api/v1/billing", params)
    if args.output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return int(ExitCode.OK)
    _write_atomically(Path(args.output), data)
    return int(ExitCode.OK)


def _write_atomically(path: Path, data: bytes) -> None:
    """Whole file or nothing: a temp file in the same directory, renamed over the target."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or Path("."))
    except OSError as e:
        raise CliError(f"cannot write {path}: {e.strerror}", ExitCode.FAILED) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise CliError(f"cannot write {path}: {e.strerror}", ExitCode.FAILED) from None


def register(sub: Any) -> None:
    p = sub.add_parser("billing", help="usage ledger exports")
    verbs = p.add_subparsers(dest="billing_verb", metavar="VERB")
    verbs.required = True
    e = verbs.add_parser(
        "export", help="usage rows of closed periods (csv, jsonl or parquet)",
        description="T is ISO 8601 (UTC unless an offset is given) or epoch seconds; rows whose "
        "period starts in [--from, --to) are exported.")
    e.add_argument("--from", dest="from_", required=True, metavar="T", help="start (inclusive)")
    e.add_argument("--to", required=True, metavar="T", help="end (exclusive)")
    e.add_argument("--format", choices=["csv", "jsonl", "parquet"], default="csv")
    e.add_argument("--group-by", metavar="KEY",
                   help="container, pod, namespace, runtime or label:KEY")
    e.add_argument("--output", "-o", metavar="FILE", help="write here (default: stdout)")
    e.add_argument("--include-open", action="store_true",
                   help="also rows of periods not closed yet (they may still change)")
    e.set_defaults(func=cmd_export)
