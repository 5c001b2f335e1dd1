"""Deterministic overlapping-tile evaluation with linear-ramp blending.

Used for encode (image tiles -> latent tiles, output = input / f) and decode (latent
tiles -> image tiles, output = input * f) of images too large to run in one pass.

Seam handling: tiles overlap by ``overlap`` input pixels. Each tile's output is
weighted by a ramp that rises linearly over the overlap on every side that has a
neighbour (weight (i+1)/(O+1) at distance i from that edge, 1 inside) and is flat on the
image border; outputs are accumulated as sum(w·y)/sum(w). Tiles are visited in a fixed
raster order with fixed shapes, so the result is bit-identical between runs on the same
device. It is *not* identical to the untiled result: GroupNorm statistics and the
mid-block self-attention only see one tile.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["blend_tiles", "tile_starts"]


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Start offsets covering [0, size): regular steps, the last tile flush with the end
    (so every tile has the full ``tile`` size and no extra padding is needed)."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def _ramp(length: int, overlap: int, left: bool, right: bool, device: torch.device) -> torch.Tensor:
    w = torch.ones(length, dtype=torch.float32, device=device)
    if overlap <= 0:
        return w
    n = min(overlap, length)
    ramp = torch.arange(1, n + 1, dtype=torch.float32, device=device) / (overlap + 1)
    if left:
        w[:n] = torch.minimum(w[:n], ramp)
    if right:
        w[length - n :] = torch.minimum(w[length - n :], ramp.flip(0))
    return w


def blend_tiles(
    x: torch.Tensor,
    fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    tile: int,
    overlap: int,
    scale_num: int,
    scale_den: int,
) -> torch.Tensor:
    """Apply ``fn`` to overlapping ``tile×tile`` windows of ``x`` (B×C×H×W) and blend.

    ``fn`` maps an input window of size t to an output of size t*scale_num/scale_den.
    ``tile``, ``overlap`` and H, W must be divisible by ``scale_den`` so tile borders
    land on whole output pixels.
    """
    H, W = x.shape[-2:]
    if H <= tile and W <= tile:
        return fn(x)
    stride = tile - overlap
    out: torch.Tensor | None = None
    wsum: torch.Tensor | None = None
    o_out = overlap * scale_num // scale_den
    H_out, W_out = H * scale_num // scale_den, W * scale_num // scale_den
    for y0 in tile_starts(H, tile, stride):
        th = min(tile, H)
        for x0 in tile_starts(W, tile, stride):
            tw = min(tile, W)
            y = fn(x[..., y0 : y0 + th, x0 : x0 + tw]).float()
            if out is None:
                out = torch.zeros((*y.shape[:-2], H_out, W_out), dtype=torch.float32, device=y.device)
                wsum = torch.zeros((H_out, W_out), dtype=torch.float32, device=y.device)
            oy, ox = y0 * scale_num // scale_den, x0 * scale_num // scale_den
            oh, ow = y.shape[-2], y.shape[-1]
            wy = _ramp(oh, o_out, left=y0 > 0, right=y0 + th < H, device=y.device)
            wx = _ramp(ow, o_out, left=x0 > 0, right=x0 + tw < W, device=y.device)
            w2 = wy[:, None] * wx[None, :]
            out[..., oy : oy + oh, ox : ox + ow] += y * w2
            assert wsum is not None
            wsum[oy : oy + oh, ox : ox + ow] += w2
    assert out is not None and wsum is not None
    return out / wsum
