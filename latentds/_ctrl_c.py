"""Ctrl-C and the worker processes a command starts: only the parent handles it."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

__all__ = ["workers_ignore_ctrl_c"]


@contextlib.contextmanager
def workers_ignore_ctrl_c() -> Iterator[None]:
    """Start the LocalCluster's worker processes with SIGINT ignored (an ignored signal stays
    ignored across exec, and Python then installs no KeyboardInterrupt handler). Ctrl-C reaches the
    terminal's whole process group: each worker printed a KeyboardInterrupt / CancelledError
    traceback while the client, which alone handles it, closed the cluster and said 'interrupted'.
    A Ctrl-C during the few seconds of the start is lost; only the main thread can set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        if before is not None:  # None: a handler set outside Python, which cannot be put back from here
            signal.signal(signal.SIGINT, before)
