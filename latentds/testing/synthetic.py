"""SYNTHETIC DICOM files and datasets for tests, the demo and benchmarks.

Everything this module writes is a **synthetic phantom**, not patient data. It generates
radiograph-like images (a mammogram-like breast or a limb with bones) that may carry a
*fine-grained* finding -- a cluster of 1-3 px microcalcifications or a 1 px hairline
fracture -- that is visible at full resolution and largely lost after 8x downsizing, so
that a benchmark built on it rewards models that keep high-resolution detail (the point of
the latentds paper). Files are labelled synthetic in their tags (SeriesDescription and
ImageComments "SYNTHETIC - latentds phantom", PatientName "SYNTHETIC^PHANTOM") and every
dataset root carries a README.txt that says so.

The phantoms themselves live in :mod:`latentds.testing.phantoms`; their public names are
part of this module's API too (a synthetic dataset is described by its phantoms).

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

from .phantoms import CLASSES, GRADED, KINDS, phantom, phantom_with_finding

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

_UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root; UIDs are hashed from entropy sources
_PIXEL_SPACING_MM = 0.1  # 1-3 px calcifications are then 0.1-0.3 mm: sub-millimetre


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
    # The entropy key keeps the module's original dotted name: it feeds every UID, and changing it
    # would change the bytes of every synthetic file (and so every cache key built on them).
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
        "Generated by latentds.testing.synthetic.make_dataset (radiograph-like phantoms; no real images,\n"
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
