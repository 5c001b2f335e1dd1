"""Prepare the training data of :mod:`latentds.train.vae.train_six` as one compressed ``.npz``.

    python -m latentds.train.vae.prepare_six_data --out .gpu/data/six.npz

Runs here (it needs pydicom + pydicom-data); the GPU machine then reads only the file.
Every image goes through latentds' own preprocessing (:func:`latentds.preprocess.load_image`:
modality LUT / rescale, VOI window, MONOCHROME1 inversion, ROI crop, resize) or is a
SYNTHETIC phantom (:func:`latentds.testing.synthetic.phantom`), and is stored as float16 in
[0, 1] (rounding error ≤ 2.4e-4, i.e. ~77 dB: far below every PSNR we measure).

Contents:
* ``train_NNNN`` + ``train_weight`` (sampling weight per image) + ``train_names``:
  48 phantoms 512×416 (seeds 1000+, both kinds, half positive), 16 *graded* positive phantoms
  (seeds 1100+, finding size and contrast drawn as in the sweep's graded task), the CR radiograph
  ``RG1_UNCR.dcm`` at 512 and 1024 px longest side (the most weight: the test is CR),
  and six other public grayscale pydicom-data images (MR, CT, US, OT, NM) at 512 px.
* ``train_mask_NNNN`` (uint8, positive phantoms only): where the image differs from the
  negative phantom of the same seed (the finding), dilated by 2 px -- what
  ``train_six.py --finding-weight`` up-weights and ``--finding-crop`` centres crops on.
* ``val_NNNN``: the α guard's images: 4 other phantoms (seed 2) and RG1 at 768 px (a
  scale not trained on; pydicom-data has only two CR patients and RG3 is the test one).
* ``pair_pos_NNNN`` / ``pair_neg_NNNN`` / ``pair_box_NNNN``: 6 phantom pairs (seed 3) that
  differ only at the finding, with the finding's bounding box (8 px margin): the α guard
  keeps the finding-region PSNR ≥ s2d's.
Held out of all of it (test data of benchmarks/codec_table.py): ``RG3_UNCR.dcm`` and
phantom seeds 10000+.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

__all__ = ["prepare", "main"]

OTHER_PUBLIC = ["MR2_UNCR.dcm", "693_UNCR.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm",
                "JPGLosslessP14SV1_1s_1f_8b.dcm", "mlut_18.dcm", "JPEG2000_UNC.dcm"]


def _box(pos: np.ndarray, neg: np.ndarray, margin: int = 8) -> np.ndarray:
    ys, xs = np.nonzero(np.abs(pos - neg) > 1e-3)
    if ys.size == 0:
        return np.array([0, 0, 0, 0], dtype=np.int32)
    h, w = pos.shape
    return np.array([max(0, ys.min() - margin), min(h, ys.max() + margin + 1),
                     max(0, xs.min() - margin), min(w, xs.max() + margin + 1)], dtype=np.int32)


def finding_mask(pos: np.ndarray, neg: np.ndarray, dilate: int = 2) -> np.ndarray:
    """uint8 mask of the pixels where a positive phantom differs from its negative twin
    (same seed: they differ only at the finding), grown by ``dilate`` px so the loss also
    sees the finding's immediate surround (its edge is what a blur erases)."""
    m = np.abs(pos.astype(np.float32) - neg.astype(np.float32)) > 1e-3
    grown = m.copy()
    h, w = m.shape
    for dy in range(-dilate, dilate + 1):
        for dx in range(-dilate, dilate + 1):
            ys, yd = (slice(max(0, dy), h + min(0, dy)), slice(max(0, -dy), h + min(0, -dy)))
            xs, xd = (slice(max(0, dx), w + min(0, dx)), slice(max(0, -dx), w + min(0, -dx)))
            grown[yd, xd] |= m[ys, xs]
    return grown.astype(np.uint8)


def prepare(out: str | Path, *, n_synthetic: int = 48, n_graded: int = 16, n_val: int = 4, n_pairs: int = 6) -> dict:
    from pydicom.data import get_testdata_file

    from latentds.preprocess import load_image
    from latentds.testing.synthetic import KINDS, phantom

    def pdd(name: str) -> str:
        p = get_testdata_file(name, download=False)
        if p is None:
            raise FileNotFoundError(f"pydicom-data file {name!r} is not installed here (pip install pydicom-data)")
        return str(p)

    arrays: dict[str, np.ndarray] = {}
    names: list[str] = []
    weights: list[float] = []

    def add(key: str, img: np.ndarray, w: float, label: str, mask: np.ndarray | None = None) -> None:
        if mask is not None:
            arrays[f"train_mask_{len(names):04d}"] = mask
        arrays[f"train_{len(names):04d}"] = np.clip(img, 0, 1).astype(np.float16)
        names.append(label)
        weights.append(w)

    def synthetic(seed: int, pos: bool, kind: str, graded: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        img = phantom(seed, (512, 416), positive=pos, kind=kind, graded=graded)
        if not pos:
            return img, None
        return img, finding_mask(img, phantom(seed, (512, 416), positive=False, kind=kind, graded=graded))

    for i in range(n_synthetic):
        kind = KINDS[i % 2]
        pos = (i // 2) % 2 == 0
        img, mask = synthetic(1_000 + i, pos, kind)
        add("", img, 1.0, f"synthetic:{kind}:{1_000 + i}:{int(pos)}", mask)
    for i in range(n_graded):
        kind = KINDS[i % 2]
        img, mask = synthetic(1_100 + i, True, kind, graded=True)
        add("", img, 1.0, f"synthetic-graded:{kind}:{1_100 + i}:1", mask)
    rg1 = pdd("RG1_UNCR.dcm")
    # CR weight: the CR images carry about as much sampling mass as all phantoms together.
    add("", load_image(rg1, size=512), 12.0, "pydicom-data:RG1_UNCR.dcm@512")
    add("", load_image(rg1, size=1024), 24.0, "pydicom-data:RG1_UNCR.dcm@1024")
    for name in OTHER_PUBLIC:
        add("", load_image(pdd(name), size=512), 2.0, f"pydicom-data:{name}@512")
    arrays["train_weight"] = np.asarray(weights, dtype=np.float32)
    arrays["train_names"] = np.asarray(names)

    val_names = []
    for i in range(n_val):
        kind = KINDS[i % 2]
        arrays[f"val_{i:04d}"] = phantom(2_000 + i, (512, 416), positive=True, kind=kind).astype(np.float16)
        val_names.append(f"synthetic:{kind}:{2_000 + i}:1")
    arrays[f"val_{n_val:04d}"] = np.clip(load_image(rg1, size=768), 0, 1).astype(np.float16)
    val_names.append("pydicom-data:RG1_UNCR.dcm@768")
    arrays["val_names"] = np.asarray(val_names)
    for i in range(n_pairs):
        kind = KINDS[i % 2]
        pos = phantom(3_000 + i, (512, 416), positive=True, kind=kind).astype(np.float16)
        neg = phantom(3_000 + i, (512, 416), positive=False, kind=kind).astype(np.float16)
        arrays[f"pair_pos_{i:04d}"], arrays[f"pair_neg_{i:04d}"] = pos, neg
        arrays[f"pair_box_{i:04d}"] = _box(pos.astype(np.float32), neg.astype(np.float32))
    info = {
        "train": names, "val": val_names, "pairs": n_pairs,
        "held_out": ["pydicom-data:RG3_UNCR.dcm", "synthetic seeds 10000+"],
        "preprocessing": "latentds.preprocess.load_image(crop_roi=True, size=...) / latentds.testing.synthetic.phantom; float16",
    }
    arrays["info_json"] = np.asarray(json.dumps(info))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    info["bytes"] = out.stat().st_size
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=".gpu/data/six.npz")
    p.add_argument("--synthetic", type=int, default=48)
    p.add_argument("--graded", type=int, default=16, help="graded positive phantoms (finding size/contrast as the sweep's graded task)")
    a = p.parse_args(argv)
    info = prepare(a.out, n_synthetic=a.synthetic, n_graded=a.graded)
    print(json.dumps({k: info[k] for k in ("bytes", "pairs")} | {"n_train": len(info["train"]), "n_val": len(info["val"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
