"""The one JSON spelling that every identity in latentds is hashed from.

Codec fingerprints (docs/design.md invariant 2), cache namespaces, sample keys and the
metadata stored beside each latent are all sha256 over :func:`canonical_json`. Changing a single
byte of its output for an input that occurs in practice changes those identities and makes every
existing cache miss, so the output is pinned by tests/test_canonical.py against values computed
by the release before this module existed.
"""

from __future__ import annotations

import json
import sys
from typing import Any

__all__ = ["canonical_json"]


def canonical_json(obj: Any, *, strict: bool = False) -> str:
    """``obj`` as compact JSON with sorted keys, so equal values hash equally.

    Tuples are lists (json's own rule); sets and frozensets become lists sorted by their own
    canonical spelling (their iteration order is not stable across processes); a torch dtype is its
    name (``"torch.float16"``). Anything else that json cannot write is ``str(obj)`` -- a path, a
    numpy scalar (``np.int64(5)`` -> ``"5"``: a string, as caches have always been keyed) -- unless
    ``strict``: codec fingerprints pass ``strict=True``, because an object without a stable text
    (a function, a module) would give a fingerprint that changes between runs, so it is refused with
    a TypeError instead.
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_Default(strict))


class _Default:
    """json's ``default=`` hook: called only for objects json cannot write itself."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict

    def __call__(self, obj: Any) -> Any:
        if isinstance(obj, (set, frozenset)):
            return sorted(obj, key=lambda v: canonical_json(v, strict=self.strict))
        torch = sys.modules.get("torch")  # a torch dtype can only exist once torch is imported
        if torch is not None and isinstance(obj, torch.dtype):
            return str(obj)
        if self.strict:
            raise TypeError(f"not JSON-serialisable in a codec fingerprint: {obj!r}")
        return str(obj)
