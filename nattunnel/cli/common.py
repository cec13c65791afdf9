"""What the command modules share: the subparsers object their ``add_parser`` fills, and
``fail``, the one-line error every command prints before a non-zero exit."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Protocol


class Subparsers(Protocol):
    """``ArgumentParser.add_subparsers()``'s result, as far as the commands use it."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


def fail(command: str, message: str, status: int = 2) -> int:
    """Print ``nattunnel COMMAND: message`` to stderr; return ``status``."""
    print(f"nattunnel {command}: {message}", file=sys.stderr)
    return status
