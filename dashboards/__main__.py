"""`python -m dashboards` writes dashboards/json/*.json; `--check` exits 1 when they are stale."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dashboards.generate import JSON_DIR, stale, write_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards", description=__doc__)
    parser.add_argument("--out", type=Path, default=JSON_DIR, help="output directory")
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args(argv)
    if args.check:
        names = stale(args.out)
        for name in names:
            print(f"stale: {args.out / name} (run: python -m dashboards)", file=sys.stderr)
        return 1 if names else 0
    try:
        for path in write_all(args.out):
            print(path)
    except OSError as e:
        print(f"dashboards: cannot write {args.out}: {e.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
