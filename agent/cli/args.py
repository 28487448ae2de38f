"""argparse with one-line errors: bad usage is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from agent.core.exit_codes import ExitCode


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(int(ExitCode.USAGE))
