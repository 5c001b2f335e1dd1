"""Read one radiograph (DICOM, PNG, JPEG or TIFF) into a 2-D float32 array in [0, 1].

DICOM pipeline (paper, appendix A.1)::

    decode_pixels -> apply_modality -> apply_voi -> invert_if_monochrome1
                  -> crop_roi -> resize_longest

Each stage is a small pure function so it can be tested against pydicom's own LUT code.
The DICOM stages live in :mod:`latentds.dicom`, what every reader shares (sources, pixel
limit, ROI crop, resize) in ``latentds._imagefile``; every name is exported here.

Decisions
---------
* Only single-frame grayscale (MONOCHROME1/2, one sample per pixel) integer *Pixel Data* is
  accepted. Multi-frame, colour or palette images, 1-bit (SEG) and *Float Pixel Data*,
  non-image objects (RTPLAN, SR, ...), truncated or undecodable pixel data and unsupported
  transfer syntaxes or missing decoder plugins raise :class:`~latentds.errors.DicomError`;
  the message names the file and the fault.
* Files without the 128-byte preamble and ``DICM`` marker are read with ``force=True`` only
  if they start with a group 0002/0008 element (raw or ACR-NEMA style data sets); anything
  else is "not a DICOM file". Such files carry no transfer syntax, so the one pydicom parsed
  the data set with is used for their (necessarily native) pixel data.
* Silent garbage is refused: native pixel data shorter than Rows x Columns x BitsAllocated,
  or holding at least one whole extra frame, raises; a JPEG / JPEG-LS / JPEG 2000 frame must
  end with its EOI/EOC marker, because those decoders return a half-decoded image from a cut
  codestream without complaint.
* VOI: the VOI LUT Sequence wins over the window (pydicom's ``prefer_lut``); output is scaled
  by the range the standard defines for it (window: pydicom's y_min..y_max; LUT: 0..2^n-1).
  With neither, the data's own min..max is used; constant data then raises.
* PNG/JPEG/TIFF: 1-, 8- and 16-bit grayscale are divided by 2^bits - 1 (mode ``I`` is taken
  as 16-bit and must fit in it). RGB(A)/palette images whose three channels are identical
  (and whose alpha, if any, is opaque) are accepted as grayscale; real colour, transparency,
  float and multi-page images raise :class:`~latentds.errors.ImageReadError`.
* Resizing is bicubic with antialiasing (torch), clipped back to [0, 1].
* Memory is bounded before any decoder runs: the declared size (DICOM Rows x Columns, a
  PNG/JPEG/TIFF header) must not exceed a pixel limit (``max_pixels``; default
  :data:`DEFAULT_MAX_PIXELS`, or the ``LATENTDS_MAX_PIXELS`` environment variable), and a
  compressed DICOM frame's own header (JPEG / JPEG-LS SOF, JPEG 2000 SIZ) must state the same
  size as the data set. Decoders allocate from one of those two sizes, so a 970-byte file
  declaring 30000 x 30000 is refused in microseconds instead of taking 23 GB, and a 4000 x 4000
  header over a tiny JPEG is refused instead of decoding into a garbage image (issue 11, item 3).
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from latentds._imagefile import (DEFAULT_MAX_PIXELS, DICOM_EXTENSIONS, IMAGE_EXTENSIONS, Source, _finish, _label,
                                 _open, crop_roi, is_dicom, pixel_limit, resize_longest, roi_bbox)
from latentds.dicom import apply_modality, apply_voi, decode_pixels, invert_if_monochrome1, read_dicom
from latentds.errors import DicomError, ImageReadError, LatentdsError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DICOM_EXTENSIONS",
    "IMAGE_EXTENSIONS",
    "PIPELINE_VERSION",
    "Preprocess",
    "apply_modality",
    "apply_voi",
    "crop_roi",
    "decode_pixels",
    "invert_if_monochrome1",
    "is_dicom",
    "load_image",
    "pixel_limit",
    "read_dicom",
    "read_image",
    "resize_longest",
    "roi_bbox",
]

# Bump whenever a stage changes its output: it is part of every cache fingerprint.
PIPELINE_VERSION = 1

_PIL_FORMATS = ("PNG", "JPEG", "TIFF")


@dataclass(frozen=True)
class Preprocess:
    """The preprocessing configuration; :meth:`to_dict` is part of the cache fingerprint."""

    crop_roi: bool = True
    size: int | None = None  # longest side after resize; None keeps the size
    # Not part of the fingerprint: it changes which files are refused, never an accepted image.
    max_pixels: int | None = None  # None: LATENTDS_MAX_PIXELS or DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if not isinstance(self.crop_roi, bool):
            raise TypeError(f"Preprocess.crop_roi must be a bool, got {self.crop_roi!r}")
        if self.size is not None and (
            isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1
        ):
            raise ValueError(f"Preprocess.size must be a positive int or None, got {self.size!r}")
        if self.max_pixels is not None and (isinstance(self.max_pixels, bool) or not isinstance(self.max_pixels, int)
                                            or self.max_pixels < 1):
            raise ValueError(f"Preprocess.max_pixels must be a positive int or None, got {self.max_pixels!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("max_pixels")  # a safety limit, not an output-changing stage: caches stay valid
        return {"version": PIPELINE_VERSION, **d}

    def __call__(self, src: Source, *, name: str | None = None) -> np.ndarray:
        return load_image(src, crop_roi=self.crop_roi, size=self.size, name=name, max_pixels=self.max_pixels)



# ----------------------------------------------------------------------------- PNG / JPEG / TIFF


def _pil_to_unit(im: Any, label: str) -> np.ndarray:
    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=np.float32)
    if mode == "L":
        return np.asarray(im, dtype=np.float32) / 255.0
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(im).astype(np.float32) / 65535.0
    if mode == "I":  # 16-bit PNG/TIFF on some Pillow versions; 32-bit data is refused
        arr = np.asarray(im)
        bits = getattr(im, "tag_v2", {}).get(258, 16) if im.format == "TIFF" else 16
        bits = bits[0] if isinstance(bits, tuple) else bits
        if bits != 16 or arr.min() < 0 or arr.max() > 65535:
            raise ImageReadError(f"{label}: {bits}-bit integer image; only 8/16-bit supported")
        return arr.astype(np.float32) / 65535.0
    if mode in ("LA", "La", "P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr"):
        has_alpha = mode in ("LA", "La", "PA", "RGBA", "RGBa") or (
            mode == "P" and "transparency" in im.info
        )
        arr = np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
        if has_alpha and (arr[..., 3] != 255).any():
            raise ImageReadError(f"{label}: image has transparency (mode {mode}); latentds encodes opaque grayscale "
                                 "images only: flatten it onto an opaque background as grayscale, or move it out "
                                 "of the tree")
        r, g, b = arr[..., 0], arr[..., 1], arr[..., 2]
        if not (np.array_equal(r, g) and np.array_equal(r, b)):
            raise ImageReadError(f"{label}: colour image (mode {mode}); only grayscale supported: convert it to "
                                 "grayscale first (e.g. PIL's Image.convert('L')), or move it out of the tree")
        return r.astype(np.float32) / 255.0
    raise ImageReadError(f"{label}: unsupported pixel mode {mode!r}; only 8/16-bit grayscale")


def read_image(
    src: Source, *, crop_roi: bool = True, size: int | None = None, name: str | None = None,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Read a grayscale PNG / JPEG / TIFF into a float32 2-D array in [0, 1]."""
    from PIL import Image

    label = _label(src, name)
    limit = pixel_limit(max_pixels)
    with _open(src, label, ImageReadError) as fp:
        try:
            with Image.open(fp, formats=_PIL_FORMATS) as im:
                w, h = im.size  # from the header: nothing is decoded yet
                if w * h > limit:
                    raise ImageReadError(
                        f"{label}: declares {w}x{h} = {w * h:,} pixels, over the limit of {limit:,}; refused "
                        "before decoding (raise it with max_pixels= or LATENTDS_MAX_PIXELS if genuine)")
                if getattr(im, "n_frames", 1) != 1:
                    raise ImageReadError(f"{label}: {im.n_frames} frames; only single images: save one file per "
                                         "frame, or move it out of the tree")
                im.load()  # decode fully now: a truncated file must raise, not pad
                img = _pil_to_unit(im, label)
        except LatentdsError:
            raise
        except Exception as exc:
            # Pillow puts the file object's repr in its message (<_io.BytesIO object at 0x...>): the
            # label already names the file, so say "the file" instead of leaking a useless repr.
            text = re.sub(r"\s*<_io\.\w+[^>]*>", "", str(exc))
            raise ImageReadError(f"{label}: cannot read as PNG/JPEG/TIFF: {type(exc).__name__}: {text}") from exc
    return _finish(img, crop_roi, size, label, ImageReadError)


def load_image(
    src: Source, *, crop_roi: bool = True, size: int | None = None, name: str | None = None,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Read DICOM (by extension or content, see :func:`is_dicom`) or PNG/JPEG/TIFF.
    ``max_pixels``: refuse larger images before decoding (see :func:`pixel_limit`)."""
    label = _label(src, name)
    by_name = os.path.splitext(label)[1].lower() in DICOM_EXTENSIONS
    error = DicomError if by_name else ImageReadError
    with _open(src, label, error) as fp:
        # fp is seekable here, so is_dicom can look at the content; the name was judged above.
        at = fp.tell()
        if not fp.read(1):  # said plainly, not as "cannot identify image file" / "no DICM marker"
            raise error(f"{label}: empty file (0 bytes), probably cut short by a copy or download: copy it again, "
                        "or move it out of the tree")
        fp.seek(at)
        reader = read_dicom if by_name or is_dicom(fp) else read_image
        return reader(fp, crop_roi=crop_roi, size=size, name=label, max_pixels=max_pixels)

