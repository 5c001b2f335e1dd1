"""Training data for the KL autoencoder: sources, patient-disjoint split, crops.

Sources (``data.train`` / ``data.val``; a list combines several):

* ``{source: synthetic, n: 64, shape: [512, 416], kinds: [calcification, fracture], seed: 0}``
  SYNTHETIC phantoms from :func:`latentds.testing.synthetic.phantom` (half of them positive).
* ``{source: folder, root: DIR}`` every DICOM / PNG / JPEG / TIFF under ``root`` (recursive).
* ``{source: csv, path: FILE.csv, path_column: path, patient_column: patient, root: DIR}``
  one image per row; relative paths are resolved against ``root`` (default: the CSV's folder).
* ``{source: files, paths: [...]}`` explicit files.
* any source takes ``repeat: N`` (sampling weight: its images are listed N times).
* ``{source: pydicom-data, names: [RG1_UNCR.dcm]}`` public test images of pydicom-data (local only).

Images are read with :func:`latentds.preprocess.load_image` (DICOM modality LUT / rescale,
VOI window, MONOCHROME1 inversion, ROI crop, optional resize) -- the same pipeline the
codecs see. Without an explicit ``data.val``, a ``val_fraction`` of *patients* is held out
(rows without a patient id count as their own patient), so no patient is in both sets.

Every training crop is a pure function of ``(seed, sample index)``: the sampler hands out
indices ``(step * world + rank) * batch + j``, so a run resumed from step ``k`` sees exactly
the crops an uninterrupted run would, on any number of workers.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from latentds.preprocess import DICOM_EXTENSIONS, IMAGE_EXTENSIONS, load_image

__all__ = [
    "build_banks", "ImageBank", "Item", "items_from_source", "patient_split", "StepSampler", "TrainCrops",
    "ValCrops",
]


@dataclass(frozen=True)
class Item:
    """One image: where it comes from (a path, or a synthetic phantom spec) and its patient."""

    key: str
    patient: str | None
    path: str | None = None
    synthetic: tuple[int, tuple[int, int], bool, str] | None = None  # (seed, shape, positive, kind)

    def load(self, preprocess: Mapping[str, Any]) -> np.ndarray:
        if self.synthetic is not None:
            from latentds.testing.synthetic import phantom

            seed, shape, positive, kind = self.synthetic
            return phantom(seed, shape, positive=positive, kind=kind)
        assert self.path is not None
        return load_image(self.path, crop_roi=bool(preprocess.get("crop_roi", True)), size=preprocess.get("size"))


def _files_under(root: Path) -> list[Path]:
    exts = set(DICOM_EXTENSIONS) | set(IMAGE_EXTENSIONS)
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts)


def items_from_source(spec: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[Item]:
    if isinstance(spec, Sequence) and not isinstance(spec, (str, bytes)):
        out: list[Item] = []
        for s in spec:
            out += items_from_source(s)
        return out
    if int(spec.get("repeat", 1)) > 1:  # sampling weight: list the source's images `repeat` times
        return items_from_source({k: v for k, v in spec.items() if k != "repeat"}) * int(spec["repeat"])
    kind = spec.get("source")
    if kind == "synthetic":
        n = int(spec.get("n", 64))
        shape = tuple(int(v) for v in spec.get("shape", (512, 416)))
        kinds = list(spec.get("kinds", ["calcification", "fracture"]))
        seed = int(spec.get("seed", 0))
        items = []
        for i in range(n):
            s = seed * 1_000_003 + i
            k = kinds[i % len(kinds)]
            items.append(Item(f"synthetic:{k}:{s}", f"synthetic-{s}", synthetic=(s, shape, bool((i // len(kinds)) % 2), k)))
        return items
    if kind == "folder":
        root = Path(os.path.expanduser(spec["root"]))
        if not root.is_dir():
            raise FileNotFoundError(f"data source folder {str(root)!r} does not exist")
        files = _files_under(root)
        if not files:
            raise FileNotFoundError(f"data source folder {str(root)!r} holds no DICOM/PNG/JPEG/TIFF files")
        return [Item(str(p.relative_to(root)), None, path=str(p)) for p in files]
    if kind == "pydicom-data":
        # Public test images shipped in the pydicom-data package (e.g. the CR radiographs
        # RG1_UNCR.dcm, RG3_UNCR.dcm); resolved locally, never downloaded.
        from pydicom.data import get_testdata_file

        items = []
        for name in spec["names"]:
            path = get_testdata_file(name, download=False)
            if path is None:
                raise FileNotFoundError(f"pydicom-data file {name!r} is not installed locally (pip install pydicom-data)")
            items.append(Item(f"pydicom-data:{name}", spec.get("patient", {}).get(name, name), path=str(path)))
        return items
    if kind == "files":
        return [Item(str(p), None, path=str(p)) for p in spec["paths"]]
    if kind == "csv":
        csv_path = Path(os.path.expanduser(spec["path"]))
        root = Path(spec.get("root") or csv_path.parent)
        col = spec.get("path_column", "path")
        pcol = spec.get("patient_column")
        items = []
        with open(csv_path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or col not in reader.fieldnames:
                raise ValueError(f"{csv_path}: no column {col!r} (columns: {reader.fieldnames})")
            if pcol is not None and pcol not in reader.fieldnames:
                raise ValueError(f"{csv_path}: no patient column {pcol!r} (columns: {reader.fieldnames})")
            for row in reader:
                rel = row[col]
                p = Path(rel) if os.path.isabs(rel) else root / rel
                patient = (row[pcol] or None) if pcol else None
                items.append(Item(rel, patient, path=str(p)))
        if not items:
            raise ValueError(f"{csv_path}: no rows")
        return items
    raise ValueError(f"unknown data source {kind!r}; use synthetic, folder, csv or files")


def patient_split(items: Sequence[Item], val_fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """Deterministic patient-disjoint split: each patient group goes to validation when
    the hash of (seed, patient) falls in the lowest ``val_fraction`` of groups."""
    groups: dict[str, list[Item]] = {}
    for it in items:
        groups.setdefault(it.patient if it.patient is not None else f"item:{it.key}", []).append(it)
    if val_fraction <= 0 or len(groups) < 2:
        return list(items), []
    order = sorted(groups, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    n_val = min(len(order) - 1, max(1, round(val_fraction * len(order))))
    val_groups = set(order[:n_val])
    train = [it for g in sorted(groups) if g not in val_groups for it in groups[g]]
    val = [it for g in sorted(groups) if g in val_groups for it in groups[g]]
    return train, val


class ImageBank:
    """Preprocessed images in [0, 1], loaded on demand and optionally kept in RAM."""

    def __init__(self, items: Sequence[Item], preprocess: Mapping[str, Any], cache: bool = True) -> None:
        if not items:
            raise ValueError("no images")
        self.items = list(items)
        self.preprocess = dict(preprocess or {})
        self.cache = cache
        self._mem: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> np.ndarray:
        img = self._mem.get(i)
        if img is None:
            img = self.items[i].load(self.preprocess)
            if self.cache:
                self._mem[i] = img
        return img


def _pad_to(img: np.ndarray, h: int, w: int) -> np.ndarray:
    ph, pw = max(0, h - img.shape[0]), max(0, w - img.shape[1])
    if ph or pw:
        img = np.pad(img, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)), mode="reflect" if min(img.shape) > 1 else "edge")
        if img.shape[0] < h or img.shape[1] < w:  # reflect cannot pad beyond the image size
            return _pad_to(img, h, w)
    return img


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
    y = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return y[0, 0].clamp_(0.0, 1.0).numpy()


class TrainCrops(Dataset):
    """``crops[i]`` is a random (resized) crop chosen by ``default_rng([seed, i])``.

    ``random``: a crop×crop window at native resolution. ``resized``: a window of side
    crop·zoom (zoom in ``resized_scale``, aspect ratio in ``resized_ratio``) resized to
    crop×crop with antialiased bicubic -- zoom is relative to the crop, not to the image, so
    a 4096-px mammogram is never squeezed into 256 px and fine features stay near their
    native scale. ``mixed`` picks resized with probability ``resized_prob``."""

    def __init__(self, bank: ImageBank, cfg: Mapping[str, Any], seed: int) -> None:
        self.bank = bank
        self.crop = int(cfg["crop"])
        self.mode = cfg.get("crop_mode", "mixed")
        self.p_resized = {"random": 0.0, "resized": 1.0}.get(self.mode, float(cfg.get("resized_prob", 0.5)))
        self.scale = tuple(float(v) for v in cfg.get("resized_scale", (0.5, 2.0)))
        self.ratio = tuple(float(v) for v in cfg.get("resized_ratio", (0.75, 1.3333333)))
        self.hflip = bool(cfg.get("hflip", True))
        aug = cfg.get("intensity_aug") or {}
        self.invert_prob = float(aug.get("invert_prob", 0.0))
        self.gamma = tuple(float(v) for v in aug.get("gamma", (1.0, 1.0)))
        self.window_prob = float(aug.get("window_prob", 0.0))
        self.window_width = tuple(float(v) for v in aug.get("window_width", (0.5, 1.0)))
        self.seed = int(seed)

    def __len__(self) -> int:
        return 2**62

    def crop_array(self, i: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, int(i)])
        img = self.bank[int(rng.integers(len(self.bank)))]
        c = self.crop
        if rng.random() < self.p_resized:
            zoom = float(np.exp(rng.uniform(np.log(self.scale[0]), np.log(self.scale[1]))))
            ar = float(np.exp(rng.uniform(np.log(self.ratio[0]), np.log(self.ratio[1]))))
            h = max(1, min(img.shape[0], round(c * zoom * np.sqrt(ar))))
            w = max(1, min(img.shape[1], round(c * zoom / np.sqrt(ar))))
            y0 = int(rng.integers(img.shape[0] - h + 1))
            x0 = int(rng.integers(img.shape[1] - w + 1))
            out = _resize(img[y0:y0 + h, x0:x0 + w], c)
        else:
            img = _pad_to(img, c, c)
            y0 = int(rng.integers(img.shape[0] - c + 1))
            x0 = int(rng.integers(img.shape[1] - c + 1))
            out = img[y0:y0 + c, x0:x0 + c]
        if self.hflip and rng.random() < 0.5:
            out = out[:, ::-1]
        # Intensity augmentation (the target is the input, so any monotone map is valid):
        # teaches the full [0, 1] range, e.g. saturated white regions absent from the data.
        if self.gamma != (1.0, 1.0):
            out = np.clip(out, 0.0, 1.0) ** float(np.exp(rng.uniform(np.log(self.gamma[0]), np.log(self.gamma[1]))))
        if self.window_prob and rng.random() < self.window_prob:
            # A narrower display window: real radiographs have large regions clipped to
            # pure white / black (collimation, burn-out), which phantoms lack.
            width = float(rng.uniform(*self.window_width))
            lo = float(rng.uniform(-0.25 * width, 1.0 - 0.75 * width))
            out = np.clip((out - lo) / width, 0.0, 1.0)
        if self.invert_prob and rng.random() < self.invert_prob:
            out = 1.0 - out
        return np.ascontiguousarray(out, dtype=np.float32)

    def __getitem__(self, i: int) -> dict[str, Any]:
        x = torch.from_numpy(self.crop_array(i))[None] * 2.0 - 1.0
        return {"image": x, "index": int(i)}


class ValCrops(Dataset):
    """Deterministic centre crops (padded when smaller) of the validation images."""

    def __init__(self, bank: ImageBank, crop: int, max_images: int | None = None) -> None:
        self.bank = bank
        self.crop = int(crop)
        self.n = len(bank) if not max_images else min(len(bank), int(max_images))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        img = _pad_to(self.bank[i], self.crop, self.crop)
        c = self.crop
        y0, x0 = (img.shape[0] - c) // 2, (img.shape[1] - c) // 2
        x = torch.from_numpy(np.ascontiguousarray(img[y0:y0 + c, x0:x0 + c]))[None] * 2.0 - 1.0
        return {"image": x, "index": int(i)}


class StepSampler(Sampler[int]):
    """Indices for micro-steps ``start .. stop-1`` of ``rank`` out of ``world``:
    micro-step k gives ``(k * world + rank) * batch + j`` for j < batch."""

    def __init__(self, start: int, stop: int, batch: int, rank: int = 0, world: int = 1) -> None:
        self.start, self.stop, self.batch, self.rank, self.world = start, stop, batch, rank, world

    def __len__(self) -> int:
        return max(0, self.stop - self.start) * self.batch

    def __iter__(self) -> Iterator[int]:
        for k in range(self.start, self.stop):
            base = (k * self.world + self.rank) * self.batch
            yield from range(base, base + self.batch)


def build_banks(cfg: Mapping[str, Any], seed: int) -> tuple[ImageBank, ImageBank | None]:
    d = cfg
    items = items_from_source(d["train"])
    if d.get("val"):
        train, val = items, items_from_source(d["val"])
    else:
        train, val = patient_split(items, float(d.get("val_fraction", 0.1)), seed)
    pre = d.get("preprocess") or {}
    cache = bool(d.get("cache", True))
    return ImageBank(train, pre, cache), (ImageBank(val, pre, cache) if val else None)
