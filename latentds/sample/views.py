"""Cached augmented views: K versions of each image, augmented BEFORE encoding, each cached
under its own key, one served per epoch.

A latent cannot be shifted by less than one latent pixel, flipped or turned without changing
what the codec would have produced; the image can. View ``v`` of a sample is its preprocessed
image shifted by a whole number of image pixels below the codec's factor ``f`` (a sub-latent-pixel
phase), optionally mirrored and turned by a multiple of 90 degrees (180 only, for non-square
images, so every view has the image's shape), then encoded as usual. The transform is drawn from
a generator seeded by the sample's key and ``v``: the same image and view give the same latent
in any process, on any machine, lazily or in bulk.

Keys: view 0 is the image itself under the sample's own key, so ``views=1`` is exactly the cache
without views, and a cache filled with ``views=1`` is view 0 of any ``views=K``. View ``v >= 1``
is keyed by a hash of the sample key, ``v`` and :data:`VIEW_SCHEME`; it is an ordinary cache entry,
so compaction, verify, export and gc treat it like any other sample. Changing how views are drawn
means a new :data:`VIEW_SCHEME` (new keys), never other latents under old keys.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ..store.entries import sample_key

__all__ = ["VIEW_SCHEME", "View", "apply_view", "choose_view", "view_key", "view_of"]

#: version of the rule that maps (sample key, view) to a transform; part of every view key
VIEW_SCHEME = 1


@dataclass(frozen=True)
class View:
    """One view's transform: shift down/right by ``(dy, dx)`` image pixels (zero fill), then
    mirror left-right if ``flip``, then turn by ``turns`` x 90 degrees counter-clockwise."""

    index: int
    dy: int = 0
    dx: int = 0
    flip: bool = False
    turns: int = 0

    def as_meta(self) -> dict[str, int | bool]:
        return {"view": self.index, "view_scheme": VIEW_SCHEME, "view_shift": [self.dy, self.dx],
                "view_flip": self.flip, "view_turns": self.turns}


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("\0".join(map(str, parts)).encode()).digest()[:8], "little")


def view_of(key: str, v: int, f: int, square: bool) -> View:
    """The transform of view ``v`` of the sample keyed ``key`` for a codec of factor ``f``."""
    if v == 0:
        return View(0)
    rng = np.random.default_rng(_seed("latentds-view", VIEW_SCHEME, key, v))
    dy, dx = (int(s) for s in rng.integers(0, max(1, int(f)), 2))
    flip = bool(rng.integers(2))
    turns = int(rng.integers(4)) if square else 2 * int(rng.integers(2))
    return View(v, dy, dx, flip, turns)


def view_key(key: str, v: int) -> str:
    """Cache key of view ``v`` (view 0: the sample's own key)."""
    return key if v == 0 else sample_key({"sample": key, "view": int(v), "view_scheme": VIEW_SCHEME})


def apply_view(img: np.ndarray, view: View) -> np.ndarray:
    """``img`` (2-D) under ``view``; view 0 returns ``img`` itself."""
    if view.index == 0:
        return img
    h, w = img.shape
    dy, dx = min(view.dy, h), min(view.dx, w)  # an image smaller than the shift becomes background
    out = np.zeros_like(img)
    out[dy:, dx:] = img[:h - dy, :w - dx]  # sub-latent-pixel phase, zero (background) fill
    if view.flip:
        out = out[:, ::-1]
    if view.turns:
        out = np.rot90(out, view.turns)
    return np.ascontiguousarray(out)


def choose_view(index: int, epoch: int, views: int) -> int:
    """Which of ``views`` views sample ``index`` serves in ``epoch`` (deterministic; every
    process agrees; over epochs each view is served about equally often)."""
    if views <= 1:
        return 0
    return _seed("latentds-epoch-view", epoch, index) % views
