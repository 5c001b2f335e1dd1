"""The codec of a worker process: created once per process (keyed by name, device and kwargs),
in a process whose malloc settings do not slow the encoder down. Used by the Dask bulk task;
weights travel as a path in ``codec_kwargs``, never as pickled tensors."""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

from ..store.entries import canonical_json

__all__ = ["CODEC_LOCK", "get_codec", "restore_malloc_thresholds"]

_CODECS: dict[str, Any] = {}
CODEC_LOCK = threading.Lock()
_MALLOC_RESTORED = False

# glibc's steady state under its dynamic mmap threshold (see restore_malloc_thresholds)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 4 * 1024 * 1024 * 8  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: 32 MiB


def restore_malloc_thresholds() -> bool:
    """Undo, in this worker process, the slowdown Dask's nanny gives CPU encoders.

    The nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``
    (``distributed.nanny.pre-spawn-environ``). Setting any malloc threshold switches off glibc's
    *dynamic* mmap threshold, so every buffer over 128 KiB (each activation of the encoder) is
    mmap'ed and unmapped again and its pages fault in afresh on every batch: the forward ran
    1.2-1.6x slower in a worker than in a plain process (benchmarks/RESULTS.md). Here the
    thresholds are set to the values glibc's dynamic rule settles at (mmap 32 MiB, trim twice
    that), once per process, only where the variable is set (glibc on Linux). Latents are
    unchanged: this moves where memory comes from, not what is computed.
    """
    global _MALLOC_RESTORED
    if _MALLOC_RESTORED or not sys.platform.startswith("linux") or "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return False
    _MALLOC_RESTORED = True
    if os.environ.get("LATENTDS_KEEP_MALLOC_THRESHOLDS"):  # opt out: keep the worker's settings
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD_MAX) == 1 and ok
        return ok
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to undo
        return False


def get_codec(name: str, device: str, kwargs: dict[str, Any]) -> Any:
    """The codec for this process, created once (per name, device and kwargs)."""
    from ..codecs import create_codec

    k = canonical_json({"name": name, "device": device, "kwargs": kwargs})
    with CODEC_LOCK:
        c = _CODECS.get(k)
        if c is None:
            c = _CODECS[k] = create_codec(name, device=device, **kwargs)
            _CODECS[k + "#loads"] = _CODECS.get(k + "#loads", 0) + 1
    return c
