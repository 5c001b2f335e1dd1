"""A second graded detection task, written independently of ``latentds.testing.synthetic``, as a
plain 8-bit PNG ImageFolder (``negative/``, ``positive/``) for ``latentds sweep --data-root``.

Why it exists: the sweep's acceptance (issue 12) must hold on a task the project did not
make, so nothing here imports latentds. The image model is different on purpose:

* background: a power-law ("1/f^beta") random texture (a tissue-like clutter whose energy
  sits at low spatial frequencies, so it survives downsampling while small specks do not),
  a random linear shading, and pixel noise;
* positives: a cluster of 1-3 bright sharp-edged discs ("specks") of ONE diameter level per
  image, chosen from ``LEVELS`` (each a range the diameter is drawn from), with a contrast drawn
  per image from ``CONTRAST``. A disc's edge is visible at full size whatever its diameter (to a
  probe with a small receptive field), while after an antialiased downsampling by f a disc
  narrower than f keeps only about contrast x area / f² and sinks into the clutter: the
  3-5 px level should fade at f = 4, 7-10 px at f = 8, 14-20 px at f = 16, so bicubic falls in
  steps (a level must also be several latent pixels wide to be learned from a few dozen
  images: the first calibration, 2 / 5 / 12 px at contrast 2-3, fell at once after full size).

``labels.csv`` (path, label, diameter_px, contrast) beside the class folders records what
was drawn; the sweep does not read it (a foreign task has no ``findings.csv``).

    python benchmarks/foreign_task.py OUT [--n-per-class 192] [--size 128 128] [--seed 7]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image

#: Speck diameter levels, each a range (px at full size) the diameter is drawn from; one level
#: per positive image, equally often.
LEVELS = ((3.0, 5.0), (7.0, 10.0), (14.0, 20.0))
#: Which level the i-th positive gets (cycled): the two levels that make the bicubic steps
#: between f = 4, 8 and 16 twice as often as the smallest one (the full size -> f = 4 step).
LEVEL_CYCLE = (0, 1, 2, 1, 2)
#: Contrast of a speck's peak over the local background, in units of the texture's std (a
#: range: faint specks keep full size below 1.0).
CONTRAST = (1.5, 5.0)


def texture(rng: np.random.Generator, shape: tuple[int, int], beta: float = 2.6) -> np.ndarray:
    """Zero-mean, unit-std power-law noise: white noise whose spectrum is scaled by 1/|k|^(beta/2)."""
    h, w = shape
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.rfftfreq(w)[None, :]
    k = np.sqrt(kx ** 2 + ky ** 2)
    k[0, 0] = 1.0  # the mean is removed below; avoid dividing by zero
    spec = (rng.normal(size=k.shape) + 1j * rng.normal(size=k.shape)) / k ** (beta / 2)
    spec[0, 0] = 0.0
    img = np.fft.irfft2(spec, s=shape)
    return (img - img.mean()) / (img.std() + 1e-12)


def speck_cluster(rng: np.random.Generator, shape: tuple[int, int], diameter: float, amplitude: float) -> np.ndarray:
    """1-3 discs of ``diameter`` (edges anti-aliased over one pixel) within a few diameters of a
    random centre; overlapping discs do not add up."""
    h, w = shape
    out = np.zeros(shape)
    margin = min(int(1.5 * diameter) + 4, min(h, w) // 2 - 1)  # small images: the centre may sit nearer the edge
    cy, cx = rng.uniform(margin, h - margin), rng.uniform(margin, w - margin)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(int(rng.integers(1, 4))):
        y = cy + rng.uniform(-1.0, 1.0) * diameter
        x = cx + rng.uniform(-1.0, 1.0) * diameter
        r = np.sqrt((yy - y) ** 2 + (xx - x) ** 2)
        out = np.maximum(out, np.clip(diameter / 2 - r + 0.5, 0.0, 1.0))
    return amplitude * out


def make_image(rng: np.random.Generator, shape: tuple[int, int], positive: bool, level: int) -> tuple[np.ndarray, float, float]:
    """One 8-bit image, its speck diameter and contrast (0, 0 for a negative)."""
    h, w = shape
    img = texture(rng, shape)
    gy, gx = rng.normal(0, 0.4, 2)
    img += gy * np.linspace(-1, 1, h)[:, None] + gx * np.linspace(-1, 1, w)[None, :]
    diameter = contrast = 0.0
    if positive:
        diameter = float(rng.uniform(*LEVELS[level]))
        contrast = float(rng.uniform(*CONTRAST))
        img += speck_cluster(rng, shape, diameter, contrast)
    img += rng.normal(0, 0.15, shape)  # pixel noise, independent of the texture
    return np.clip(110 + 22 * img, 0, 255).astype(np.uint8), diameter, contrast


def write_task(root: str | Path, n_per_class: int = 192, shape: tuple[int, int] = (128, 128), seed: int = 7) -> Path:
    """Write the task under ``root`` (deterministic per seed) and return ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows = []
    for label, positive in (("negative", False), ("positive", True)):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img, d, c = make_image(rng, shape, positive, LEVEL_CYCLE[i % len(LEVEL_CYCLE)])
            rel = f"{label}/{label[:3]}{i:04d}.png"
            Image.fromarray(img).save(root / rel)
            rows.append((rel, label, f"{d:.2f}", f"{c:.3f}"))
    with open(root / "labels.csv", "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["path", "label", "diameter_px", "contrast"])
        wr.writerows(rows)
    return root


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--n-per-class", type=int, default=192)
    p.add_argument("--size", type=int, nargs=2, default=(128, 128), metavar=("H", "W"))
    p.add_argument("--seed", type=int, default=7)
    a = p.parse_args(argv)
    print(write_task(a.out, a.n_per_class, tuple(a.size), a.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
