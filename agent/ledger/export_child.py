"""The child process of a billing export: one export of the ledger to stdout.

Started by agent.ledger.export_relay, which says why exports run in a process of their own.
It imports no more than the export needs (no aiohttp, no collectors): it starts in ~70 ms.
Its exit status says how it ended: 0 done, 2 a bad request (its one-line reason on stderr),
3 parquet asked without pyarrow, anything else a failure.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import sys

from agent.ledger.export import ExportError, MissingPyarrow, export
from agent.ledger.storage import stored_rows

#: The child's nice value: below the agent and the containers (an export is batch work).
CHILD_NICE = 10
EXIT_BAD_REQUEST = 2
EXIT_NO_PYARROW = 3


def main(argv: list[str] | None = None) -> int:
    """The child: one export to stdout."""
    p = argparse.ArgumentParser(prog="agent.ledger.export_child")
    p.add_argument("--db", required=True)
    p.add_argument("--from", dest="start", type=int, required=True)
    p.add_argument("--to", dest="end", type=int, required=True)
    p.add_argument("--format", required=True)
    p.add_argument("--group-by")
    p.add_argument("--open", action="store_true")
    args = p.parse_args(argv)
    # The agent lowers it as soon as it starts; this covers a start by anything else.
    with contextlib.suppress(OSError):
        if os.getpriority(os.PRIO_PROCESS, 0) < CHILD_NICE:
            os.setpriority(os.PRIO_PROCESS, 0, CHILD_NICE)
    try:
        db = sqlite3.connect(f"file:{args.db}?mode=ro", uri=True, timeout=30.0)
        try:
            db.execute("PRAGMA temp_store=MEMORY")
            rows = stored_rows(db, args.start, args.end, args.open)
        finally:
            db.close()
        body, _media = export(rows, args.format, args.group_by)
    except MissingPyarrow as e:
        print(e, file=sys.stderr)
        return EXIT_NO_PYARROW
    except ExportError as e:
        print(e, file=sys.stderr)
        return EXIT_BAD_REQUEST
    except sqlite3.Error as e:
        print(f"the ledger could not be read: {e}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(body)
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
