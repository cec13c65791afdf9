"""The ``nattunnel`` command line: one module per command.

The top of the import graph: it may import everything, ``lab`` and ``bench`` included (for the
``demo`` and ``bench`` commands, loaded only when they run).
"""

from .main import main

__all__ = ["main"]
