"""The ``nattunnel`` command line: ``main`` parses the arguments and runs the command.

One module per command (``up``, ``keygen``, ``pubkey``, ``demo``, ``bench`` with its
benchmarks), each adding its subparser and ``set_defaults(func=...)``; ``main.py`` builds the
parser from them and dispatches on ``args.func``; ``common.py`` is what they share.

The top of the import graph: it may import everything, ``lab`` and ``bench`` included, but
only inside the commands that need them (``demo``, ``bench``), so that ``nattunnel up`` loads
neither.
"""

from .main import main

__all__ = ["main"]
