"""Moved to :mod:`latentds.store` (issue 14): verify and inspect in ``latentds.store.ops``, gc in
``latentds.store.collect``, repair in ``latentds.store.repairs``. This alias keeps old import
lines working while importers move; nothing is defined here."""

__all__ = ["MIN_GRACE_S", "GcReport", "RepairReport", "SourceReport", "VerifyReport", "describe", "gc",
    "min_grace_s", "repair", "verify", "verify_sources"]

from .store.collect import MIN_GRACE_S, GcReport, gc, min_grace_s  # noqa: F401
from .store.ops import SourceReport, VerifyReport, describe, verify, verify_sources  # noqa: F401
from .store.repairs import RepairReport, repair  # noqa: F401
