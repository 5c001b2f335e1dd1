"""SYNTHETIC radiograph-like phantoms (arrays only; :mod:`latentds.testing.synthetic` writes
them as DICOM files and ImageFolder datasets).

A phantom is a mammogram-like breast or a limb with bones that may carry a *fine-grained*
finding -- a cluster of 1-3 px microcalcifications or a 1 px hairline fracture -- visible at
full resolution and largely lost after 8x downsizing. Not patient data. Deterministic: the
same seed and arguments give bit-identical arrays.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CLASSES", "KINDS", "GRADED", "phantom", "phantom_with_finding"]

CLASSES = ("negative", "positive")
KINDS = ("calcification", "fracture")

#: The graded task: per image, one finding size (px; log-uniform in the range) and one
#: contrast (uniform). Calcification: the diameter of every speck of the cluster (+-15 %);
#: fracture: the width of the lucent line. Sizes span the downsizing factors 4, 8 and 16, so
#: a codec's f erases some findings and keeps others (the fine task, sizes 1-3 px, is a
#: cliff: full size ~1.0, every f >= 4 ~ chance). The calcification ranges were set by
#: measurement at 192x160, 128 images per class (benchmarks/RESULTS.md, "graded task"):
#: small-cnn full size 0.97-0.99, bicubic f=4 ~0.77, f=8 ~0.67, f=16 ~0.47 (4 seeds). The
#: fracture ranges are less calibrated (full size was unstable across seeds there).
GRADED = {
    "calcification": {"size": (1.5, 24.0), "contrast": (0.1, 0.3)},
    "fracture": {"size": (1.0, 20.0), "contrast": (0.06, 0.2)},
}


# ----------------------------------------------------------------------------- phantoms


def _rngs(seed: int, kind: str) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """Independent streams for the anatomy, the decoys and the finding, so that the
    positive and the negative image of one seed differ only by the finding."""
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, (int(seed) >> 32) & 0xFFFFFFFF, KINDS.index(kind)])
    return tuple(np.random.default_rng(s) for s in ss.spawn(3))  # type: ignore[return-value]


def _powerlaw_noise(rng: np.random.Generator, shape: tuple[int, int], beta: float,
                    f_low: float = 1.0 / 256, stretch: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """Zero-mean, unit-std noise with power spectrum ~ 1/f**beta (beta ~ 3 is the classic
    mammographic-texture exponent). ``stretch`` (sy, sx) > 1 elongates structures along
    that axis."""
    h, w = shape
    white = rng.standard_normal((h, w))
    fy = np.fft.fftfreq(h)[:, None] * stretch[0]
    fx = np.fft.rfftfreq(w)[None, :] * stretch[1]
    f = np.sqrt(fy * fy + fx * fx)
    filt = np.maximum(f, f_low) ** (-beta / 2.0)
    filt[0, 0] = 0.0
    out = np.fft.irfft2(np.fft.rfft2(white) * filt, s=(h, w))
    out -= out.mean()
    out /= out.std() + 1e-12
    return out


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _blob(img: np.ndarray, cy: float, cx: float, diameter: float, amp: float,
          aspect: float = 1.0, angle: float = 0.0, soft: float = 2.0) -> None:
    """Add a smooth-edged elliptical blob (a benign-looking, blurry decoy) in place."""
    r = diameter / 2.0
    ext = int(np.ceil(r * max(aspect, 1.0) + 2 * soft + 2))
    y0, y1 = max(int(cy) - ext, 0), min(int(cy) + ext + 1, img.shape[0])
    x0, x1 = max(int(cx) - ext, 0), min(int(cx) + ext + 1, img.shape[1])
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    dy, dx = yy - cy, xx - cx
    c, s = np.cos(angle), np.sin(angle)
    u, v = (c * dx + s * dy) / aspect, -s * dx + c * dy
    d = np.sqrt(u * u + v * v)
    img[y0:y1, x0:x1] += amp * _smoothstep((r + soft / 2 - d) / soft)


def _spot(img: np.ndarray, cy: float, cx: float, diameter: float, amp: float) -> None:
    """Add a sharp 1-3 px disk (a microcalcification), antialiased by pixel-centre distance."""
    r = diameter / 2.0
    y0, y1 = max(int(np.floor(cy - r - 1)), 0), min(int(np.ceil(cy + r + 1)) + 1, img.shape[0])
    x0, x1 = max(int(np.floor(cx - r - 1)), 0), min(int(np.ceil(cx + r + 1)) + 1, img.shape[1])
    if y0 >= y1 or x0 >= x1:  # wholly outside the image (a large graded cluster near the edge of a small one)
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    d = np.hypot(yy - cy, xx - cx)
    img[y0:y1, x0:x1] += amp * np.clip(r + 0.5 - d, 0.0, 1.0)


def _breast(shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mammogram-like (CC view, chest wall on the left): returns (image, tissue weight in
    [0,1], dense-tissue map) before noise."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    cy = h * rng.uniform(0.45, 0.55)
    ry = h * rng.uniform(0.40, 0.47)
    rx = w * rng.uniform(0.72, 0.88)
    theta = np.arctan2((yy - cy) / ry, xx / rx)
    # lumpy outline: a few low-order harmonics of the polar angle
    wobble = 1.0
    for k in (2, 3, 5):
        wobble = wobble + rng.uniform(-0.025, 0.025) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    r = np.sqrt(((yy - cy) / ry) ** 2 + (xx / rx) ** 2) / wobble
    # compressed breast: uniform thickness in the centre, thinning over the outer ~20%
    thick = np.sqrt(_smoothstep((1.0 - r) / 0.22))
    inside = _smoothstep((1.0 - r) / 0.01)

    coarse = _powerlaw_noise(rng, shape, beta=3.0, stretch=(1.0, 0.45))  # elongated toward the nipple
    fine = _powerlaw_noise(rng, shape, beta=2.6, stretch=(1.0, 0.5))
    # fibro-glandular tissue: denser behind the nipple / centre, fatty towards the skin
    centre_bias = 1.5 * (0.7 - r) + rng.uniform(-0.5, 0.5)
    dense = _smoothstep((coarse + 0.4 * fine + centre_bias + 1.2) / 3.6)
    fat = rng.uniform(0.26, 0.34)
    glandular = rng.uniform(0.30, 0.42)
    img = thick * (fat + glandular * dense + 0.02 * fine)
    # skin line: a slightly brighter thin rim
    img += 0.05 * inside * np.exp(-(((1.0 - r) / 0.012) ** 2))
    tissue = np.clip(thick * inside, 0.0, 1.0)
    return img, tissue, dense


def _limb(shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list]:
    """Forearm-like radiograph: soft-tissue band with one or two tubular bones. Returns
    (image, bone map in [0,1], bones as (centre x per row, outer radius))."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    t = (yy - h / 2) / h
    cx = w * rng.uniform(0.45, 0.55) + w * rng.uniform(-0.05, 0.05) * t + w * rng.uniform(-0.03, 0.03) * t * t
    half = w * rng.uniform(0.30, 0.36) * (1.0 + rng.uniform(-0.12, 0.12) * t)
    d_soft = np.abs(xx - cx) / half
    soft = np.sqrt(np.clip(1.0 - d_soft ** 2, 0.0, 1.0))  # chord through an elliptic limb
    soft_tex = _powerlaw_noise(rng, shape, beta=3.0, stretch=(0.4, 1.0))
    img = soft * (rng.uniform(0.22, 0.28) + 0.03 * soft_tex)

    nb = int(rng.integers(1, 3))
    bones = []
    bone_map = np.zeros(shape)
    trab = _powerlaw_noise(rng, shape, beta=2.2, stretch=(0.5, 1.0))
    if nb == 1:
        centres = [0.0]
    else:
        gap = rng.uniform(0.40, 0.55)
        centres = [-gap / 2, gap / 2]
    for off in centres:
        R = w * (rng.uniform(0.075, 0.10) if nb == 1 else rng.uniform(0.055, 0.075))
        r_in = R * rng.uniform(0.55, 0.72)
        slope = rng.uniform(-0.06, 0.06)
        bx = float(cx.mean()) + off * w * 0.55 + rng.uniform(-0.03, 0.03) * w
        xc = bx + slope * (yy - h / 2) + (cx - cx.mean())
        d = np.abs(xx - xc)
        outer = np.sqrt(np.clip(R * R - d * d, 0.0, None))
        inner = np.sqrt(np.clip(r_in * r_in - d * d, 0.0, None))
        proj = (outer - 0.75 * inner) / R  # hollow tube: bright cortex at the edges
        bmask = _smoothstep((R + 0.5 - d) / 1.5)
        img += rng.uniform(0.55, 0.7) * proj * (1.0 + 0.05 * trab) * bmask
        bone_map = np.maximum(bone_map, bmask)
        bones.append((xc[:, 0].copy(), float(R)))
    return img, bone_map, bones


def _calcification_cluster(img: np.ndarray, tissue: np.ndarray, rng: np.random.Generator) -> dict:
    h, w = img.shape
    # cluster centre well inside the tissue, away from the image border
    cand = np.argwhere(tissue[16:h - 16, 16:w - 16] > 0.97) + 16
    if len(cand) == 0:
        cand = np.argwhere(tissue > 0.5)
    if len(cand) == 0:
        cand = np.array([[h // 2, w // 2]])
    cy, cx = cand[int(rng.integers(len(cand)))].astype(float)
    n = int(rng.integers(4, 11))
    spread = rng.uniform(6.0, 11.0)  # cluster fits in a ~12-22 px (1.2-2.2 mm) area
    placed: list[tuple[float, float]] = []
    for _ in range(200):  # rejection sampling: distinct specks, >= 3 px apart
        if len(placed) == n:
            break
        dy, dx = rng.uniform(-spread, spread, size=2)
        if dy * dy + dx * dx > spread * spread or any((dy - a) ** 2 + (dx - b) ** 2 < 9.0 for a, b in placed):
            continue
        placed.append((dy, dx))
    sizes, amps = [], []
    for dy, dx in placed:
        diameter = rng.uniform(1.0, 3.0)
        amp = rng.uniform(0.12, 0.2)  # modest contrast: tissue is ~0.3-0.75
        _spot(img, cy + dy, cx + dx, diameter, amp)
        sizes.append(diameter)
        amps.append(amp)
    return {"size_px": float(np.mean(sizes)) if sizes else 0.0, "contrast": float(np.mean(amps)) if amps else 0.0,
            "count": len(placed)}


def _fracture_line(img: np.ndarray, bones: list, rng: np.random.Generator) -> dict:
    h, w = img.shape
    xc, R = bones[int(rng.integers(len(bones)))]
    y0 = rng.uniform(0.2, 0.8) * h
    x0 = float(xc[int(y0)])
    ang = np.deg2rad(rng.uniform(-35.0, 35.0))  # from horizontal, across the bone band
    ext = int(np.ceil(R * 1.6 + 4))
    ya, yb = max(int(y0) - ext, 0), min(int(y0) + ext + 1, h)
    xa, xb = max(int(x0) - ext, 0), min(int(x0) + ext + 1, w)
    yy, xx = np.mgrid[ya:yb, xa:xb].astype(np.float64)
    along = (xx - x0) * np.cos(ang) + (yy - y0) * np.sin(ang)
    across = -(xx - x0) * np.sin(ang) + (yy - y0) * np.cos(ang)
    # slightly jagged: a smooth random offset along the line (< 1 px)
    k = rng.uniform(0.15, 0.35)
    jag = 0.6 * np.sin(k * along + rng.uniform(0, 2 * np.pi)) * rng.uniform(0.3, 1.0)
    weight = np.clip(1.0 - np.abs(across - jag), 0.0, 1.0)  # ~1 px wide, antialiased
    amp = rng.uniform(0.12, 0.2)
    d = np.abs(xx - xc[ya:yb, None])
    this_bone = _smoothstep((R + 0.5 - d) / 1.5)  # only the chosen bone, not its neighbour
    img[ya:yb, xa:xb] -= amp * weight * this_bone
    return {"size_px": 1.0, "contrast": float(amp), "count": 1}


def _graded_draw(rng: np.random.Generator, kind: str) -> tuple[float, float]:
    lo, hi = GRADED[kind]["size"]
    size = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    contrast = float(rng.uniform(*GRADED[kind]["contrast"]))
    return size, contrast


def _graded_cluster(img: np.ndarray, tissue: np.ndarray, rng: np.random.Generator) -> dict:
    """A cluster of 3-8 specks, all about ``size`` px across (+-15 %), spaced by >= size + 2 px."""
    h, w = img.shape
    size, contrast = _graded_draw(rng, "calcification")
    n = int(rng.integers(3, 9))
    spread = min(max(6.0, 2.2 * size) * rng.uniform(1.0, 1.4), min(h, w) / 4)
    m = int(min(spread + size, min(h, w) / 4))  # keep the cluster inside the tissue and the image
    cand = np.argwhere(tissue[m:h - m, m:w - m] > 0.97) + m
    if len(cand) == 0:
        cand = np.array([[h // 2, w // 2]])
    cy, cx = cand[int(rng.integers(len(cand)))].astype(float)
    placed: list[tuple[float, float]] = []
    gap2 = (size + 2.0) ** 2
    for _ in range(400):
        if len(placed) == n:
            break
        dy, dx = rng.uniform(-spread, spread, size=2)
        if dy * dy + dx * dx > spread * spread or any((dy - a) ** 2 + (dx - b) ** 2 < gap2 for a, b in placed):
            continue
        placed.append((dy, dx))
    for dy, dx in placed:
        _spot(img, cy + dy, cx + dx, size * rng.uniform(0.85, 1.15), contrast * rng.uniform(0.9, 1.1))
    return {"size_px": size, "contrast": contrast, "count": len(placed)}


def _graded_fracture(img: np.ndarray, bones: list, rng: np.random.Generator) -> dict:
    """A sharp-edged lucent line ``size`` px wide across one bone."""
    h, w = img.shape
    size, contrast = _graded_draw(rng, "fracture")
    xc, R = bones[int(rng.integers(len(bones)))]
    y0 = rng.uniform(0.2, 0.8) * h
    x0 = float(xc[int(y0)])
    ang = np.deg2rad(rng.uniform(-35.0, 35.0))
    ext = int(np.ceil(R * 1.6 + size + 4))
    ya, yb = max(int(y0) - ext, 0), min(int(y0) + ext + 1, h)
    xa, xb = max(int(x0) - ext, 0), min(int(x0) + ext + 1, w)
    yy, xx = np.mgrid[ya:yb, xa:xb].astype(np.float64)
    across = -(xx - x0) * np.sin(ang) + (yy - y0) * np.cos(ang)
    weight = np.clip(size / 2.0 + 0.5 - np.abs(across), 0.0, 1.0)  # antialiased band
    d = np.abs(xx - xc[ya:yb, None])
    this_bone = _smoothstep((R + 0.5 - d) / 1.5)
    img[ya:yb, xa:xb] -= contrast * weight * this_bone
    return {"size_px": size, "contrast": contrast, "count": 1}


def _decoys(img: np.ndarray, where: np.ndarray, rng: np.random.Generator, kind: str,
            bones: list | None = None) -> None:
    """Larger / blurrier distractors (both classes) so that 'any bright thing' is no cue."""
    h, w = img.shape
    cand = np.argwhere(where > 0.9)
    if len(cand) == 0:
        return
    for _ in range(int(rng.integers(0, 4))):  # benign 6-10 px blobs
        cy, cx = cand[int(rng.integers(len(cand)))].astype(float)
        _blob(img, cy, cx, rng.uniform(6.0, 10.0), rng.uniform(0.06, 0.14),
              aspect=rng.uniform(1.0, 1.6), angle=rng.uniform(0, np.pi), soft=rng.uniform(2.0, 4.0))
    if kind == "fracture" and bones and rng.random() < 0.6:
        # a broad, blurry lucent band across a bone (growth-plate / nutrient-canal lookalike)
        xc, R = bones[int(rng.integers(len(bones)))]
        y0 = rng.uniform(0.15, 0.85) * h
        bx = float(xc[int(y0)])
        yy = np.arange(h, dtype=np.float64)[:, None]
        ang = np.deg2rad(rng.uniform(-20, 20))
        xx = np.arange(w, dtype=np.float64)[None, :]
        across = -(xx - bx) * np.sin(ang) + (yy - y0) * np.cos(ang)
        sigma = rng.uniform(2.5, 4.0)
        img -= rng.uniform(0.05, 0.1) * np.exp(-0.5 * (across / sigma) ** 2) * where


def phantom(seed: int, shape: tuple[int, int] = (512, 416), *, positive: bool,
            kind: str = "calcification", graded: bool = False) -> np.ndarray:
    """A SYNTHETIC radiograph-like phantom: float32, 2-D, values in [0, 1].

    ``kind="calcification"``: a mammogram-like breast (chest wall on the left) with
    power-law (beta ~ 3) fibro-glandular texture; ``positive`` adds a cluster of 4-10
    microcalcifications of 1-3 px and contrast +0.12..0.2 within a ~12-22 px area.
    ``kind="fracture"``: a forearm-like limb with one or two tubular bones; ``positive``
    adds a ~1 px hairline lucent line (-0.12..0.2) across one bone.
    Both classes get the same decoys for a given seed (blurry 6-10 px blobs, broad lucent
    bands), so the positive and negative image of one seed differ only at the finding.
    ``graded=True``: the finding's size and contrast are drawn from :data:`GRADED` instead
    (see :func:`phantom_with_finding`, which also returns them).
    """
    return phantom_with_finding(seed, shape, positive=positive, kind=kind, graded=graded)[0]


def phantom_with_finding(seed: int, shape: tuple[int, int] = (512, 416), *, positive: bool,
                         kind: str = "calcification", graded: bool = False) -> tuple[np.ndarray, dict]:
    """:func:`phantom` and a description of its finding: ``{"size_px", "contrast", "count"}``
    (``size_px`` 0 for a negative; for the fine task the mean speck diameter / 1 px line)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    h, w = (int(shape[0]), int(shape[1]))
    if h < 32 or w < 32:
        raise ValueError(f"shape must be at least 32x32, got {shape!r}")
    r_anat, r_decoy, r_find = _rngs(seed, kind)
    info = {"size_px": 0.0, "contrast": 0.0, "count": 0}
    if kind == "calcification":
        img, tissue, _ = _breast((h, w), r_anat)
        where = tissue
        _decoys(img, where, r_decoy, kind)
        if positive:
            info = _graded_cluster(img, tissue, r_find) if graded else _calcification_cluster(img, tissue, r_find)
    else:
        img, bone_map, bones = _limb((h, w), r_anat)
        where = bone_map
        _decoys(img, where, r_decoy, kind, bones)
        if positive:
            info = _graded_fracture(img, bones, r_find) if graded else _fracture_line(img, bones, r_find)
    # mild quantum-like noise (signal dependent) on top of a dark, not quite black, background
    noise = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 7, KINDS.index(kind)]))
    img = 0.02 + img
    img = img + (0.004 + 0.008 * np.sqrt(np.clip(img, 0.0, None))) * noise.standard_normal((h, w))
    return np.clip(img, 0.0, 1.0).astype(np.float32), info
