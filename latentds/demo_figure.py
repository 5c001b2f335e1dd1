"""The demo's picture: a crop around a SYNTHETIC finding, the original beside each codec's
reconstruction, magnified with nearest-neighbour so single pixels stay visible.

Made with Pillow only (a core dependency), so ``latentds demo`` draws it on a plain install.
The finding is located without any bookkeeping: the positive and negative phantom of one seed
differ only at the finding (see :func:`latentds.testing.synthetic.phantom_with_finding`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["finding_crop_figure", "locate_finding"]


def locate_finding(pos: np.ndarray, neg: np.ndarray) -> tuple[int, int]:
    """Centre (row, col) of where a positive phantom differs from its negative twin."""
    diff = np.abs(pos.astype(np.float64) - neg.astype(np.float64))
    if not diff.any():
        raise ValueError("the two images are identical: no finding to locate")
    ys, xs = np.nonzero(diff >= 0.25 * diff.max())
    return int(np.round(ys.mean())), int(np.round(xs.mean()))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def finding_crop_figure(codecs: Sequence[str], path: str | os.PathLike[str], *, shape: tuple[int, int] = (192, 160),
                        seed: int = 3, crop: int = 40, zoom: int = 5, kind: str = "calcification") -> Path:
    """Write a PNG: the crop around one finding, original first, then each codec's
    ``decode(encode(x))`` with the crop's PSNR; returns the path. Codecs without weights here
    are skipped (named in the panel title row as missing)."""
    import torch
    from PIL import Image, ImageDraw

    from .codecs import create_codec
    from .errors import CodecError
    from .testing.synthetic import phantom_with_finding

    pos, _ = phantom_with_finding(seed, shape, positive=True, kind=kind)
    neg, _ = phantom_with_finding(seed, shape, positive=False, kind=kind)
    cy, cx = locate_finding(pos, neg)
    half = crop // 2
    y0 = int(np.clip(cy - half, 0, shape[0] - crop))
    x0 = int(np.clip(cx - half, 0, shape[1] - crop))

    def cut(img: np.ndarray) -> np.ndarray:
        return img[y0:y0 + crop, x0:x0 + crop]

    panels: list[tuple[str, np.ndarray]] = [("original", cut(pos))]
    x = torch.from_numpy(pos)[None, None]
    for name in codecs:
        try:
            codec = create_codec(name)
        except CodecError:
            continue  # no weights on this machine: nothing to show
        with torch.no_grad():
            rec = codec.decode(codec.encode(x))[0, 0, :shape[0], :shape[1]].float().numpy()
        c = cut(rec)
        panels.append((f"{name}  {_psnr(c, cut(pos)):.1f} dB", c))

    # window the crop to its own range so faint specks are visible in every panel alike
    lo, hi = float(np.percentile(panels[0][1], 1)), float(np.percentile(panels[0][1], 99.8))
    tile = crop * zoom
    label_h = 16
    canvas = Image.new("L", (len(panels) * (tile + 6), tile + label_h), color=255)
    draw = ImageDraw.Draw(canvas)
    for i, (label, img) in enumerate(panels):
        u8 = (np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
        canvas.paste(Image.fromarray(u8).resize((tile, tile), Image.NEAREST), (i * (tile + 6), label_h))
        draw.text((i * (tile + 6) + 2, 2), label, fill=0)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out
