"""SYNTHETIC DICOM datasets for tests, the demo and benchmarks.

Everything this module writes is a **synthetic phantom**, not patient data. It generates
radiograph-like images (a mammogram-like breast or a limb with bones) that may carry a
*fine-grained* finding -- a cluster of 1-3 px microcalcifications or a 1 px hairline
fracture -- that is visible at full resolution and largely lost after 8x downsizing, so
that a benchmark built on it rewards models that keep high-resolution detail (the point of
the latentds paper). Files are labelled synthetic in their tags (SeriesDescription and
ImageComments "SYNTHETIC - latentds phantom", PatientName "SYNTHETIC^PHANTOM") and every
dataset root carries a README.txt that says so.

The output is deterministic: the same arguments and seed give bit-identical arrays and
byte-identical files (UIDs come from ``generate_uid(entropy_srcs=...)``; no dates, clocks
or random UIDs are written).

Public API::

    CLASSES = ("negative", "positive")
    phantom(seed, shape=(512, 416), *, positive, kind="calcification") -> float32 [0, 1]
    write_dicom(path, image, *, modality="MG", bits_stored=12, photometric="MONOCHROME2",
                transfer_syntax="explicit-le", rescale=None, window=None, seed=0) -> Path
    make_dataset(root, *, n_per_class=8, shape=(512, 416), seed=0, kind="calcification",
                 modalities=("MG", "DX", "CR"),
                 transfer_syntaxes=("explicit-le", "implicit-le", "rle", "jpeg2000-lossless"),
                 bits=(12, 14, 16), progress=False) -> list[(Path, class_index)]

The *displayed* image of a written file -- stored values -> modality rescale
(RescaleSlope/Intercept) -> VOI window (DICOM LINEAR function; without a window the whole
representable modality range [rescale(0), rescale(2**BitsStored - 1)] maps to [0, 1]) ->
MONOCHROME1 inversion -- equals the ``image`` given to :func:`write_dicom` up to
quantisation.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

__all__ = [
    "CLASSES",
    "KINDS",
    "TRANSFER_SYNTAXES",
    "SYNTHETIC_LABEL",
    "GRADED",
    "phantom",
    "phantom_with_finding",
    "FINDINGS_FILE",
    "read_findings",
    "write_dicom",
    "make_dataset",
]

CLASSES = ("negative", "positive")
KINDS = ("calcification", "fracture")
SYNTHETIC_LABEL = "SYNTHETIC - latentds phantom"

#: transfer-syntax name -> DICOM UID
TRANSFER_SYNTAXES = {
    "explicit-le": "1.2.840.10008.1.2.1",
    "implicit-le": "1.2.840.10008.1.2",
    "rle": "1.2.840.10008.1.2.5",
    "jpeg2000-lossless": "1.2.840.10008.1.2.4.90",
}

#: modality -> (SOP Class UID, name)
_SOP_CLASSES = {
    "MG": ("1.2.840.10008.5.1.4.1.1.1.2", "Digital Mammography X-Ray Image Storage - For Presentation"),
    "DX": ("1.2.840.10008.5.1.4.1.1.1.1", "Digital X-Ray Image Storage - For Presentation"),
    "CR": ("1.2.840.10008.5.1.4.1.1.1", "Computed Radiography Image Storage"),
}

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

_UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root; UIDs are hashed from entropy sources
_PIXEL_SPACING_MM = 0.1  # 1-3 px calcifications are then 0.1-0.3 mm: sub-millimetre


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


# ----------------------------------------------------------------------------- DICOM


def _ds_number(value: float):
    from pydicom.valuerep import DSfloat

    return DSfloat(float(value), auto_format=True)


def write_dicom(path, image: np.ndarray, *, modality: str = "MG", bits_stored: int = 12,
                photometric: str = "MONOCHROME2", transfer_syntax: str = "explicit-le",
                rescale: tuple[float, float] | None = None, window: tuple[float, float] | None = None,
                seed: int = 0) -> Path:
    """Write ``image`` (2-D, values in [0, 1]) as a single-frame SYNTHETIC DICOM file.

    Stored values are unsigned, BitsAllocated 16, BitsStored ``bits_stored`` (8-16; 9-16
    for RLE).
    ``rescale=(slope, intercept)`` (slope > 0) writes RescaleSlope/Intercept;
    ``window=(center, width)`` (in modality units, DICOM LINEAR function) writes
    WindowCenter/Width. Stored values are chosen so that the displayed image (rescale ->
    window, or the full modality range when no window -> MONOCHROME1 inversion) equals
    ``image`` up to quantisation; the window must fit inside the representable modality
    range. ``seed`` feeds the deterministic UIDs and the fake PatientID
    (``"SYN"`` + ``seed mod 2**48`` zero-padded to 15 digits; :func:`make_dataset` passes the
    phantom's seed, so a file can be regenerated from its PatientID).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, generate_uid

    path = Path(path)
    modality = modality.upper()
    if modality not in _SOP_CLASSES:
        raise ValueError(f"modality must be one of {tuple(_SOP_CLASSES)}, got {modality!r}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"transfer_syntax must be one of {tuple(TRANSFER_SYNTAXES)}, got {transfer_syntax!r}")
    if not 8 <= int(bits_stored) <= 16:
        raise ValueError(f"bits_stored must be in 8..16, got {bits_stored!r}")
    bits_stored = int(bits_stored)
    if transfer_syntax == "rle" and bits_stored <= 8:
        # pydicom 3 / pylibjpeg-rle mis-encode BitsStored <= 8 inside BitsAllocated 16
        raise ValueError("transfer_syntax 'rle' needs bits_stored >= 9 (BitsAllocated is 16)")
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2 or img.size == 0:
        raise ValueError(f"image must be a non-empty 2-D array, got shape {img.shape}")
    if not np.all(np.isfinite(img)) or img.min() < -1e-6 or img.max() > 1 + 1e-6:
        raise ValueError("image values must be finite and within [0, 1]")
    img = np.clip(img, 0.0, 1.0)

    vmax = 2 ** bits_stored - 1
    slope, intercept = 1.0, 0.0
    ds = Dataset()
    if rescale is not None:
        slope_ds, icpt_ds = _ds_number(rescale[0]), _ds_number(rescale[1])
        slope, intercept = float(slope_ds), float(icpt_ds)
        if not slope > 0:
            raise ValueError(f"rescale slope must be > 0, got {slope}")
    # displayed value wanted before the MONOCHROME1 inversion
    shown = 1.0 - img if photometric == "MONOCHROME1" else img
    lo, hi = intercept, slope * vmax + intercept  # representable modality range
    if window is None:
        modality_values = lo + shown * (hi - lo)
    else:
        center_ds, width_ds = _ds_number(window[0]), _ds_number(window[1])
        c, wdt = float(center_ds) - 0.5, float(width_ds) - 1.0
        if wdt <= 0:
            raise ValueError(f"window width must be > 1 for the LINEAR function, got {float(width_ds)}")
        w_lo, w_hi = c - wdt / 2, c + wdt / 2
        if w_lo < lo - 1e-9 or w_hi > hi + 1e-9:
            raise ValueError(f"window [{w_lo}, {w_hi}] (modality units) does not fit the representable "
                             f"range [{lo}, {hi}] for bits_stored={bits_stored} and rescale={rescale}")
        modality_values = (shown - 0.5) * wdt + c
    stored = np.clip(np.rint((modality_values - intercept) / slope), 0, vmax).astype(np.uint16)

    digest = hashlib.sha256(stored.tobytes() + str(stored.shape).encode()).hexdigest()[:32]
    key = ["latentds.synthetic", str(int(seed))]
    study_uid = generate_uid(_UID_ROOT, key + ["study"])
    series_uid = generate_uid(_UID_ROOT, key + ["series", modality])
    sop_uid = generate_uid(_UID_ROOT, key + ["sop", modality, digest, photometric, str(bits_stored)])
    for_uid = generate_uid(_UID_ROOT, key + ["frame-of-reference"])
    sop_class, _ = _SOP_CLASSES[modality]

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = UID(TRANSFER_SYNTAXES["explicit-le"])
    ds.file_meta = meta

    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.Manufacturer = "latentds (synthetic)"
    ds.ReferringPhysicianName = ""
    ds.SeriesDescription = SYNTHETIC_LABEL
    ds.PatientName = "SYNTHETIC^PHANTOM"
    ds.PatientID = f"SYN{int(seed) & 0xFFFFFFFFFFFF:015d}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.FrameOfReferenceUID = for_uid
    ds.ImageComments = SYNTHETIC_LABEL
    if modality in ("MG", "DX"):
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImagerPixelSpacing = [_PIXEL_SPACING_MM, _PIXEL_SPACING_MM]
    if modality == "MG":
        ds.ImageLaterality = "L"
        ds.ViewPosition = "CC"
    ds.PixelSpacing = [_PIXEL_SPACING_MM, _PIXEL_SPACING_MM]
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = (int(stored.shape[0]), int(stored.shape[1]))
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if rescale is not None:
        ds.RescaleIntercept = icpt_ds
        ds.RescaleSlope = slope_ds
        ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter = center_ds
        ds.WindowWidth = width_ds
        ds.VOILUTFunction = "LINEAR"

    tsyntax = UID(TRANSFER_SYNTAXES[transfer_syntax])
    if transfer_syntax in ("explicit-le", "implicit-le"):
        ds.file_meta.TransferSyntaxUID = tsyntax
        ds.PixelData = stored.astype("<u2").tobytes()
        ds["PixelData"].VR = "OW"
    else:
        from pydicom.pixels import get_encoder

        plugins = get_encoder(tsyntax)._available  # prefer the compiled pylibjpeg encoders
        plugin = "pylibjpeg" if "pylibjpeg" in plugins else ""
        ds.compress(tsyntax, stored, encoding_plugin=plugin, generate_instance_uid=False)
        ds.LossyImageCompression = "00"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


# ----------------------------------------------------------------------------- datasets


_RESCALES = (None, (0.5, -100.0), None, (2.0, -1024.0))


def _sample_seed(seed: int, cls: int, i: int) -> int:
    s = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, (int(seed) >> 32) & 0xFFFFFFFF, cls, i, 0x5EED])
    return int(s.generate_state(1, dtype=np.uint32)[0])


def _covering_window(bits_stored: int, rescale: tuple[float, float] | None) -> tuple[float, float]:
    """A window over the central ~90% of the representable range: all data in [0, 1]
    lands inside it, so nothing saturates."""
    slope, intercept = rescale if rescale is not None else (1.0, 0.0)
    vmax = 2 ** bits_stored - 1
    lo = intercept + slope * round(0.05 * vmax)
    hi = intercept + slope * round(0.95 * vmax)
    return float(round((lo + hi) / 2 + 0.5)), float(round(hi - lo + 1))


def make_dataset(root, *, n_per_class: int = 8, shape: tuple[int, int] = (512, 416), seed: int = 0,
                 kind: str = "calcification", modalities: tuple[str, ...] = ("MG", "DX", "CR"),
                 transfer_syntaxes: tuple[str, ...] = ("explicit-le", "implicit-le", "rle", "jpeg2000-lossless"),
                 bits: tuple[int, ...] = (12, 14, 16), progress: bool = False,
                 graded: bool = False) -> list[tuple[Path, int]]:
    """Write a SYNTHETIC ImageFolder-layout DICOM dataset: ``root/negative/sNNNNN.dcm`` and
    ``root/positive/sNNNNN.dcm`` (ids unique across classes) plus ``root/README.txt``.

    Sample ``i`` of each class uses its own seed (derived from ``seed``, class, ``i``) and
    the encoding options of row ``i`` of a deterministic cycle through ``modalities``,
    ``transfer_syntaxes``, ``bits``, MONOCHROME2/1, with/without rescale and with/without a
    covering window -- the same options for both classes, so the format never predicts the
    label. Returns ``[(path, class_index)]`` sorted by path. Same arguments -> byte-identical
    files.

    ``graded=True`` writes the graded task (finding size and contrast drawn from
    :data:`GRADED`). Either way ``root/findings.csv`` records each image's finding
    (``path,class,size_px,contrast,count``; size 0 for negatives), read back by
    :func:`read_findings`, so that results can be broken down by finding size.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if n_per_class < 0:
        raise ValueError("n_per_class must be >= 0")
    if not modalities or not transfer_syntaxes or not bits:
        raise ValueError("modalities, transfer_syntaxes and bits must be non-empty")
    for t in transfer_syntaxes:
        if t not in TRANSFER_SYNTAXES:
            raise ValueError(f"unknown transfer syntax {t!r}; choose from {tuple(TRANSFER_SYNTAXES)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    total = len(CLASSES) * n_per_class
    width = max(5, len(str(max(total - 1, 0))))
    jobs = []
    for cls, name in enumerate(CLASSES):
        for i in range(n_per_class):
            jobs.append((cls, i, root / name / f"s{cls * n_per_class + i:0{width}d}.dcm"))

    it = jobs
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(jobs, desc="synthetic DICOM", unit="img")
    out: list[tuple[Path, int]] = []
    findings = []
    for cls, i, path in it:
        s = _sample_seed(seed, cls, i)
        img, info = phantom_with_finding(s, shape, positive=bool(cls), kind=kind, graded=graded)
        findings.append((path.relative_to(root).as_posix(), cls, info))
        b = int(bits[(i + i // len(transfer_syntaxes)) % len(bits)])
        rescale = _RESCALES[(i // 2) % len(_RESCALES)]
        window = _covering_window(b, rescale) if (i % 5) in (1, 2, 4) else None
        write_dicom(
            path, img,
            modality=modalities[i % len(modalities)],
            bits_stored=b,
            photometric=("MONOCHROME2", "MONOCHROME1")[(i // 3) % 2],
            transfer_syntax=transfer_syntaxes[i % len(transfer_syntaxes)],
            rescale=rescale, window=window, seed=s,
        )
        out.append((path, cls))

    readme = (
        "SYNTHETIC DATA - latentds phantom dataset. NOT patient data.\n\n"
        "Generated by latentds.synthetic.make_dataset (radiograph-like phantoms; no real images,\n"
        "no real patients; patient tags are fake: PatientName SYNTHETIC^PHANTOM).\n\n"
        f"task: {kind} ({'microcalcification cluster' if kind == 'calcification' else 'hairline fracture'}"
        " present in 'positive', absent in 'negative')\n"
        + (f"graded: finding size {GRADED[kind]['size'][0]:g}-{GRADED[kind]['size'][1]:g} px (log-uniform), "
           f"contrast {GRADED[kind]['contrast'][0]:g}-{GRADED[kind]['contrast'][1]:g}; per image in findings.csv\n"
           if graded else "") +
        f"classes: {', '.join(CLASSES)} (class index = position)\n"
        f"samples per class: {n_per_class}\nshape: {tuple(int(v) for v in shape)}\nseed: {seed}\n"
        f"modalities: {', '.join(modalities)}\ntransfer syntaxes: {', '.join(transfer_syntaxes)}\n"
        f"bits stored: {', '.join(str(b) for b in bits)}\n\n"
        "The finding is 1-3 px (calcifications) or 1 px (fracture) wide: visible at full\n"
        "resolution, largely lost after 8x downsizing. Use it to benchmark whether a pipeline\n"
        "keeps fine detail; its numbers say nothing about clinical performance.\n"
    )
    (root / "README.txt").write_text(readme, encoding="utf-8")
    lines = ["path,class,size_px,contrast,count"]
    lines += [f"{rel},{cls},{info['size_px']:.4f},{info['contrast']:.4f},{info['count']}"
              for rel, cls, info in sorted(findings, key=lambda t: t[0])]
    (root / FINDINGS_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return sorted(out, key=lambda pc: str(pc[0]))


FINDINGS_FILE = "findings.csv"


def read_findings(root) -> dict[str, dict] | None:
    """``{relative path: {"class", "size_px", "contrast", "count"}}`` from ``root/findings.csv``
    (written by :func:`make_dataset`), or None when the folder has none (a task not made here)."""
    import csv

    path = Path(root) / FINDINGS_FILE
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as fh:
        return {r["path"]: {"class": int(r["class"]), "size_px": float(r["size_px"]),
                            "contrast": float(r["contrast"]), "count": int(r["count"])} for r in csv.DictReader(fh)}
