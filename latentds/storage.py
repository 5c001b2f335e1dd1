"""Moved to :mod:`latentds.store.fsio` (issue 14). This alias keeps old import lines working
while importers move; it is the same module object, so nothing is defined twice."""

import sys

__all__: list[str] = []  # an alias of the moved module (its own __all__ applies)

from .store import fsio as _moved

sys.modules[__name__] = _moved
