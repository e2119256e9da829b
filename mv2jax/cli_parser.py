"""The argument parser of mv2jax's command-line tools: argparse, but a bad command line is one line."""

from __future__ import annotations

import argparse
from typing import NoReturn


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors (unknown flag, missing or malformed value) print one line, `PROG: error:
    MESSAGE (see --help)`, and exit with code 2, instead of the whole usage text followed by the error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")
