"""agentctl: talk to a running agentd over its Unix socket."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from agent.cli import VERB_MODULES
from agent.cli.args import OneLineParser
from agent.cli.client import AgentClient, CliError
from agent.core.exit_codes import ExitCode


def default_socket() -> Path:
    env = os.environ.get("AGENT_SOCKET")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/run/container-agent/agent.sock")
    return Path("var/agent.sock")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="agentctl", description="Inspect and control containers through a running agentd."
    )
    parser.add_argument(
        "--socket", type=Path, default=None,
        help="agent's Unix socket (default: $AGENT_SOCKET, /run/container-agent/agent.sock as "
        "root, ./var/agent.sock otherwise)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for answers")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for name in VERB_MODULES:
        if importlib.util.find_spec(name) is None:
            continue
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    client = AgentClient(args.socket or default_socket(), timeout=args.timeout)
    try:
        return int(args.func(args, client))
    except CliError as e:
        print(f"agentctl: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return int(ExitCode.FAILED)
    except BrokenPipeError:
        return int(ExitCode.OK)


if __name__ == "__main__":
    sys.exit(main())
