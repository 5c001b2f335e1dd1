"""Keep a forked child away from its parent's pooled S3 connections.

fsspec runs every async filesystem (s3fs -> aiobotocore -> aiohttp) on one event loop in an IO
thread. After ``fork`` the child holds a copy of that loop object (fsspec drops its own reference
and starts a fresh loop), and the copy's selector wraps the *same kernel epoll instance* as the
parent's: an epoll file descriptor is shared across fork like any other. When the child then
drops the inherited ``S3FileSystem`` (our ``Location`` re-creates its filesystem in each process,
which empties fsspec's instance cache), s3fs' finalizer closes the old client, and aiohttp closes
each pooled keep-alive socket: ``transport.close()`` -> ``loop._remove_reader(fd)`` ->
``epoll_ctl(EPOLL_CTL_DEL)`` on the shared instance. The child's socket copy is harmless; the
DEL is not: the parent's loop no longer hears its own pooled socket, and the parent's next
request on it (``set_epoch``, or a dataset made after an epoch) waits for s3fs' 15 s read timeout
and retries (16 s; the proxy then sees the dead socket "reset by peer"). Seen as 6 of 60 slow
setups in ``benchmarks/s3_vs_litdata.py``; 100 % of ``set_epoch`` calls after a forked epoch in
``tests/test_forksafe.py`` before this module.

The fix: in the child, right after fork, the parent's loop copy gets a fresh empty selector
(closing the child's copy of the epoll descriptor only) and is marked not running (its thread
does not exist in the child), with its error reports (aiohttp's "Unclosed client session" for
the parent's objects the child drops) silenced. Every later close of an inherited socket is then a no-op for the
parent, and s3fs' finalizer no longer schedules the old client's shutdown on the child's loop.
The loop copy is never run in the child: fsspec refuses to use an inherited instance there.
"""

from __future__ import annotations

import os
import selectors
from typing import Any

__all__ = ["install", "neutralise_inherited_loop"]

_stash: list[Any] = [None]  # the parent's fsspec loop, read just before each fork
_installed = [False]


def neutralise_inherited_loop(loop: Any) -> None:
    """Make a loop copied into a forked child unable to touch the parent's registrations."""
    old = getattr(loop, "_selector", None)
    if old is None or getattr(loop, "_closed", True):
        return
    loop._selector = selectors.DefaultSelector()  # empty: _remove_reader(fd) finds no key, no syscall
    try:
        old.close()  # this process's copy of the epoll fd only; the parent's stays open
    except (OSError, ValueError):
        pass
    loop._thread_id = None  # is_running() False: its thread exists only in the parent
    # aiohttp reports each abandoned session/connector of the parent ("Unclosed client session")
    # to its loop's exception handler when the child drops it: the parent still owns them
    loop.set_exception_handler(lambda _loop, _context: None)


def _before_fork() -> None:
    try:
        import fsspec.asyn
    except ImportError:  # pragma: no cover - fsspec is a core dependency
        return
    _stash[0] = fsspec.asyn.loop[0]


def _after_fork_child() -> None:
    loop, _stash[0] = _stash[0], None
    if loop is not None:
        neutralise_inherited_loop(loop)


def _after_fork_parent() -> None:
    _stash[0] = None


def install() -> None:
    """Register the fork hooks once per process (idempotent; a no-op without ``fork``)."""
    if _installed[0] or not hasattr(os, "register_at_fork"):
        return
    _installed[0] = True
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_parent,
                        after_in_child=_after_fork_child)
