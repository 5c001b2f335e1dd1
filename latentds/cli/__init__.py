"""The ``latentds`` command line.

One error style (docs/cli.md): a user's mistake -> ``latentds: error: <what, where, how to fix>``
on stderr, exit 2; bad data found during a job -> the failure report, exit 1; a bug -> a
traceback. ``--debug`` or ``LATENTDS_DEBUG=1`` shows the traceback for any of them.

Imports are lazy: ``latentds --help`` and every sub-command's ``--help`` load no torch.


One module per command group: encode, maintenance (inspect/compact/verify/repair/gc/export),
codecs, apps (demo/train-probe/sweep); the parser in parser.py, error handling in entry.py."""

from __future__ import annotations

from .entry import main
from .parser import build_parser

__all__ = ["build_parser", "main"]
