"""Where an image comes from and what is done to every image: reading a path or a binary stream
(never closing a caller's file), telling DICOM from other files, the pixel limit checked before any
decoder runs, and the geometry shared by all readers (ROI crop, resize). Internal to
:mod:`latentds.preprocess` and :mod:`latentds.dicom`, which export the public names."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from typing import IO, Any, Union

import numpy as np

from latentds.errors import ImageReadError, LatentdsError

Source = Union[str, "os.PathLike[str]", IO[bytes]]

DICOM_EXTENSIONS: tuple[str, ...] = (".dcm", ".dicom")
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
#: Largest image accepted (pixels), 8192 x 8192: about 2 GB peak through decode + LUT + float
#: stages. The largest radiographs (a 4096 x 5625 mammogram) are far below it.
DEFAULT_MAX_PIXELS = 1 << 26


def pixel_limit(limit: int | None = None) -> int:
    """The pixel limit in force: ``limit`` if given, else ``LATENTDS_MAX_PIXELS``, else the default."""
    if limit is not None:
        return int(limit)
    env = os.environ.get("LATENTDS_MAX_PIXELS")
    if env:
        try:
            value = int(env)
            if value < 1:
                raise ValueError
            return value
        except ValueError:
            raise ValueError(f"LATENTDS_MAX_PIXELS={env!r}: expected a positive integer number of pixels") from None
    return DEFAULT_MAX_PIXELS

def _label(src: Source, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(src, (str, os.PathLike)):
        return os.fsdecode(src)
    for attr in ("name", "full_name", "path"):  # fsspec files may only have .path
        value = getattr(src, attr, None)
        if isinstance(value, str) and value:
            return value
    return "<stream>"


@contextlib.contextmanager
def _open(src: Source, label: str, error: type[ImageReadError]) -> Iterator[IO[bytes]]:
    """Yield a seekable binary file positioned where ``src`` is; never closes a caller's file."""
    if isinstance(src, (str, os.PathLike)):
        try:
            fp = open(src, "rb")
        except OSError as exc:
            raise error(f"{label}: cannot open: {exc}") from exc
        with fp:
            yield fp
    elif hasattr(src, "read"):
        if _seekable(src):
            yield src
        else:  # pydicom and Pillow both seek, so buffer a one-way stream
            try:
                data = src.read()
            except Exception as exc:
                raise error(f"{label}: cannot read stream: {exc}") from exc
            yield io.BytesIO(data)
    else:
        raise TypeError(f"expected a path or a binary file object, got {type(src).__name__}")


def _seekable(fp: Any) -> bool:
    try:
        return bool(fp.seekable())
    except Exception:
        return False


def _extension(src: Source) -> str:
    label = _label(src, None)
    return os.path.splitext(label)[1].lower() if label != "<stream>" else ""


def _looks_like_raw_dataset(head: bytes) -> bool:
    """True if ``head`` starts with a group 0002 or 0008 tag (little or big endian)."""
    return len(head) >= 4 and (head[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08"))


def is_dicom(src: Source) -> bool:
    """True if ``src`` has a DICOM extension, the ``DICM`` marker at byte 128, or starts
    with a raw group 0002/0008 data set. A one-way stream is judged by its name only."""
    if _extension(src) in DICOM_EXTENSIONS:
        return True
    if not isinstance(src, (str, os.PathLike)) and not _seekable(src):
        return False
    try:
        with _open(src, _label(src, None), ImageReadError) as fp:
            start = fp.tell()
            head = fp.read(132)
            fp.seek(start)
    except (LatentdsError, OSError):
        return False
    return head[128:132] == b"DICM" or _looks_like_raw_dataset(head)


def roi_bbox(img: np.ndarray) -> tuple[slice, slice]:
    """Bounding box of everything brighter than the Ridler-Calvard (isodata) threshold.

    Background is dark after inversion, so the box keeps the whole foreground (body part,
    markers included); an empty or degenerate mask gives the full image."""
    from skimage.filters import threshold_isodata

    full = (slice(0, img.shape[0]), slice(0, img.shape[1]))
    if img.size == 0 or float(img.min()) == float(img.max()):
        return full
    mask = img > threshold_isodata(img)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size < 2 or cols.size < 2:
        return full
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def crop_roi(img: np.ndarray) -> np.ndarray:
    return img[roi_bbox(img)]


def resize_longest(img: np.ndarray, size: int) -> np.ndarray:
    """Antialiased bicubic resize so the longest side is ``size``; aspect ratio kept."""
    import torch
    import torch.nn.functional as F

    h, w = img.shape
    scale = size / max(h, w)
    shape = (max(1, round(h * scale)), max(1, round(w * scale)))
    if shape == (h, w):
        return np.ascontiguousarray(img, dtype=np.float32)
    x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
    y = F.interpolate(x, size=shape, mode="bicubic", antialias=True, align_corners=False)
    return np.ascontiguousarray(y[0, 0].clamp_(0.0, 1.0).numpy())  # bicubic overshoots


def _finish(
    img: np.ndarray, roi: bool, size: int | None, label: str, error: type[ImageReadError]
) -> np.ndarray:
    if img.ndim != 2 or img.size == 0:
        raise error(f"{label}: expected a non-empty 2-D image, got shape {img.shape}")
    if not np.isfinite(img).all():
        raise error(f"{label}: image contains NaN or infinite values after preprocessing")
    if roi:
        img = crop_roi(img)
    if size is not None:
        img = resize_longest(img, size)
    return np.ascontiguousarray(img, dtype=np.float32)
