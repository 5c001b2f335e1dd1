"""Read one radiograph (DICOM, PNG, JPEG or TIFF) into a 2-D float32 array in [0, 1].

DICOM pipeline (paper, appendix A.1)::

    decode_pixels -> apply_modality -> apply_voi -> invert_if_monochrome1
                  -> crop_roi -> resize_longest

Each stage is a small pure function so it can be tested against pydicom's own LUT code.

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

import contextlib
import io
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import IO, Any, Union

import numpy as np

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

Source = Union[str, "os.PathLike[str]", IO[bytes]]

DICOM_EXTENSIONS: tuple[str, ...] = (".dcm", ".dicom")
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
# Bump whenever a stage changes its output: it is part of every cache fingerprint.
PIPELINE_VERSION = 1
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

_PIL_FORMATS = ("PNG", "JPEG", "TIFF")
_REQUIRED = (
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "SamplesPerPixel",
    "PhotometricInterpretation",
)


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


# ----------------------------------------------------------------------------- sources


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


# ----------------------------------------------------------------------------- DICOM


def _read_dataset(src: Source, label: str) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    with _open(src, label, DicomError) as fp:
        start = fp.tell()
        try:
            try:
                return pydicom.dcmread(fp, force=False)
            except InvalidDicomError:
                fp.seek(start)
                if not _looks_like_raw_dataset(fp.read(8)):
                    raise DicomError(
                        f"{label}: not a DICOM file (no 'DICM' marker at byte 128 and no "
                        "data set at byte 0)"
                    ) from None
                fp.seek(start)
                return pydicom.dcmread(fp, force=True)
        except LatentdsError:
            raise
        except Exception as exc:
            raise DicomError(f"{label}: cannot parse DICOM: {type(exc).__name__}: {exc}") from exc


def _int_attr(ds: Any, keyword: str, name: str) -> int:
    value = ds.get(keyword)
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise DicomError(f"{name}: invalid {keyword} value {value!r} (bad VR or value)") from exc


def _transfer_syntax(ds: Any, name: str) -> Any:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if tsyntax:
        return tsyntax
    # No file meta (raw data set): only native pixel data is possible, encoded the way
    # pydicom parsed the rest of the data set.
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if ds["PixelData"].is_undefined_length or little is None:
        raise DicomError(f"{name}: no Transfer Syntax UID; cannot tell how pixel data is encoded")
    tsyntax = (
        ExplicitVRBigEndian
        if not little
        else ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    )
    if meta is None:
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = tsyntax
    return tsyntax


def _check_codestream_end(ds: Any, tsyntax: Any, name: str) -> None:
    """A JPEG-family frame must end with EOI/EOC (FFD9, maybe padded): those decoders
    return a partly decoded image from a cut codestream without raising."""
    from pydicom import uid
    from pydicom.encaps import generate_frames

    marker_coded = (
        *uid.JPEGTransferSyntaxes,
        *uid.JPEGLSTransferSyntaxes,
        *uid.JPEG2000TransferSyntaxes,
    )
    if tsyntax not in marker_coded:
        return
    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    except Exception as exc:
        raise DicomError(f"{name}: malformed encapsulated pixel data: {exc}") from exc
    if not frame.rstrip(b"\x00\xff").endswith(b"\xff\xd9"):  # padding may follow FFD9
        raise DicomError(
            f"{name}: compressed frame ({tsyntax.name}) does not end with an end-of-image "
            "marker: the codestream is truncated or corrupt"
        )


def _sof_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) from a JPEG or JPEG-LS frame header (SOFn / SOF55), or None."""
    i, n = 2, len(frame)
    if frame[:2] != b"\xff\xd8":
        return None
    while i + 4 <= n:
        if frame[i] != 0xFF:
            return None
        marker = frame[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            i += 2
            continue
        seg = int.from_bytes(frame[i + 2:i + 4], "big")
        if (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == 0xF7:
            if i + 9 > n:
                return None
            return int.from_bytes(frame[i + 5:i + 7], "big"), int.from_bytes(frame[i + 7:i + 9], "big")
        if marker in (0xDA, 0xD9) or seg < 2:  # scan data or end before any frame header
            return None
        i += 2 + seg
    return None


def _siz_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) from a JPEG 2000 codestream's SIZ segment (bare or inside JP2 boxes)."""
    at = frame.find(b"\xff\x4f\xff\x51", 0, 1 << 16)
    if at < 0 or at + 24 > len(frame):
        return None
    siz = frame[at + 4:at + 24]  # Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz
    xsiz, ysiz = int.from_bytes(siz[4:8], "big"), int.from_bytes(siz[8:12], "big")
    xo, yo = int.from_bytes(siz[12:16], "big"), int.from_bytes(siz[16:20], "big")
    return ysiz - yo, xsiz - xo


def _check_codestream_size(ds: Any, tsyntax: Any, rows: int, cols: int, name: str) -> None:
    """A compressed frame's decoder sizes its output from the frame's own header; a data set
    that declares another size gets either a huge allocation or a garbage image. Both sizes
    must agree (and the declared one is already within the pixel limit)."""
    from pydicom import uid
    from pydicom.encaps import generate_frames

    if tsyntax in uid.JPEG2000TransferSyntaxes:
        reader, what = _siz_size, "JPEG 2000 SIZ"
    elif tsyntax in (*uid.JPEGTransferSyntaxes, *uid.JPEGLSTransferSyntaxes):
        reader, what = _sof_size, "JPEG frame header (SOF)"
    else:
        return  # RLE and deflate decode to exactly Rows x Columns: the pixel limit covers them
    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    except Exception as exc:
        raise DicomError(f"{name}: malformed encapsulated pixel data: {exc}") from exc
    found = reader(bytes(frame[: 1 << 16]))
    if found is None:
        raise DicomError(f"{name}: compressed frame ({tsyntax.name}) has no readable {what}; the "
                         "codestream is corrupt (refused before decoding)")
    if found != (rows, cols):
        raise DicomError(f"{name}: the compressed frame is {found[0]}x{found[1]} ({what}) but the data set "
                         f"declares Rows={rows} Columns={cols}; refused before decoding (corrupt or crafted file)")


def decode_pixels(ds: Any, name: str, max_pixels: int | None = None) -> np.ndarray:
    """Stored values of a single-frame grayscale image as a native-endian 2-D integer array.

    Validates everything that can make pydicom fail or, worse, return a wrong image, and
    raises :class:`DicomError` naming ``name``. May add a file meta with the inferred
    transfer syntax to ``ds`` (see module docstring). ``max_pixels``: see :func:`pixel_limit`."""
    try:
        return _decode_pixels(ds, name, max_pixels)
    except LatentdsError:
        raise
    except Exception as exc:  # pydicom parses elements lazily: bad values raise on access
        raise DicomError(f"{name}: invalid DICOM data: {type(exc).__name__}: {exc}") from exc


def _decode_pixels(ds: Any, name: str, limit: int | None = None) -> np.ndarray:
    from pydicom.pixels import get_decoder

    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise DicomError(f"{name}: float pixel data is not supported (integer images only)")
        what = f"Modality {ds.get('Modality', '?')}"
        sop = ds.get("SOPClassUID")
        if sop:
            what += f", {getattr(sop, 'name', sop)}"
        hint = " (file truncated?)" if "Rows" in ds else "; not an image"
        raise DicomError(f"{name}: no Pixel Data element ({what}){hint}")
    missing = [k for k in _REQUIRED if ds.get(k) is None]
    if missing:
        raise DicomError(f"{name}: missing required element(s) {', '.join(missing)}")

    rows, cols = _int_attr(ds, "Rows", name), _int_attr(ds, "Columns", name)
    bits_alloc = _int_attr(ds, "BitsAllocated", name)
    bits_stored = _int_attr(ds, "BitsStored", name)
    samples = _int_attr(ds, "SamplesPerPixel", name)
    frames = 1 if ds.get("NumberOfFrames") in (None, "") else _int_attr(ds, "NumberOfFrames", name)
    photometric = str(ds.PhotometricInterpretation).strip().upper()

    if frames != 1:
        raise DicomError(f"{name}: {frames} frames; only single-frame images are supported")
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomError(
            f"{name}: colour image (PhotometricInterpretation {photometric!r}, SamplesPerPixel "
            f"{samples}); only grayscale MONOCHROME1/MONOCHROME2 is supported"
        )
    if bits_alloc == 1:
        raise DicomError(f"{name}: 1-bit pixel data (segmentation / binary mask), not an image")
    if rows < 1 or cols < 1 or bits_alloc not in (8, 16, 32) or not 1 <= bits_stored <= bits_alloc:
        raise DicomError(
            f"{name}: invalid image geometry Rows={rows} Columns={cols} "
            f"BitsAllocated={bits_alloc} BitsStored={bits_stored}"
        )
    limit = pixel_limit(limit)
    if rows * cols > limit:
        raise DicomError(
            f"{name}: declares {rows}x{cols} = {rows * cols:,} pixels, over the limit of {limit:,}; refused "
            "before decoding. Raise it with Preprocess(max_pixels=...) / LatentDataset(max_pixels=...) or "
            "the LATENTDS_MAX_PIXELS environment variable if the image is genuine"
        )

    tsyntax = _transfer_syntax(ds, name)
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise DicomError(
            f"{name}: unsupported transfer syntax {tsyntax.name!r} ({tsyntax}): no pixel decoder"
        ) from None
    if not decoder.is_available:
        raise DicomError(
            f"{name}: no decoder installed for {tsyntax.name}; needs one of: "
            + "; ".join(decoder.missing_dependencies)
        )

    if ds["PixelData"].is_undefined_length:
        _check_codestream_end(ds, tsyntax, name)
        _check_codestream_size(ds, tsyntax, rows, cols, name)
    else:
        expected = rows * cols * bits_alloc // 8
        actual = len(ds.PixelData)
        if actual < expected:
            raise DicomError(
                f"{name}: pixel data is truncated ({actual} bytes, expected {expected} for "
                f"{rows}x{cols} at {bits_alloc} bits)"
            )
        if actual >= 2 * expected:  # trailing padding is fine, a whole extra frame is not
            raise DicomError(
                f"{name}: pixel data holds {actual} bytes, at least 2 frames of {rows}x{cols} "
                f"at {bits_alloc} bits, but NumberOfFrames is 1"
            )

    try:
        arr = np.asarray(ds.pixel_array)
    except Exception as exc:
        raise DicomError(
            f"{name}: cannot decode pixel data ({tsyntax.name}): {type(exc).__name__}: {exc}"
        ) from exc
    if arr.shape != (rows, cols):
        raise DicomError(f"{name}: decoded shape {arr.shape} does not match {rows}x{cols}")
    return arr.astype(arr.dtype.newbyteorder("="), copy=False)


def apply_modality(arr: np.ndarray, ds: Any) -> np.ndarray:
    """Modality LUT Sequence, else Rescale Slope/Intercept, else ``arr`` unchanged."""
    from pydicom.pixels import apply_modality_lut

    return apply_modality_lut(arr, ds)


def _has_voi_lut(ds: Any) -> bool:  # same test as pydicom's apply_voi_lut
    seq = ds.get("VOILUTSequence")
    return bool(seq) and None not in (seq[0].get("LUTDescriptor"), seq[0].get("LUTData"))


def apply_voi(arr: np.ndarray, ds: Any) -> np.ndarray:
    """VOI LUT Sequence, else the first window (LINEAR / LINEAR_EXACT / SIGMOID), else the
    data's min..max; scaled to float32 in [0, 1]."""
    from pydicom.pixels import apply_voi_lut

    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    if _has_voi_lut(ds):
        if not np.issubdtype(arr.dtype, np.integer):  # LUT inputs are integer indices
            arr = np.rint(arr).astype(np.int64)
        out = apply_voi_lut(arr, ds, prefer_lut=True)
        descriptor = ds.VOILUTSequence[0].LUTDescriptor
        entries, first = descriptor[0] or 2**16, descriptor[1]
        lut = apply_voi_lut(np.arange(first, first + entries), ds, prefer_lut=True)
        # The standard's output range is 0..2^n-1; trust the LUT data if it says more.
        lo, hi = 0.0, float(max(2 ** descriptor[2] - 1, lut.max()))
    elif has_window:
        out = apply_voi_lut(arr, ds, prefer_lut=True)
        # pydicom maps -inf/+inf to its y_min/y_max for every VOI function, so this gives
        # exactly the output range it used (incl. rescale and modality LUT depth).
        lo, hi = (float(v) for v in apply_voi_lut(np.array([-np.inf, np.inf]), ds))
    else:
        out = arr.astype(np.float64)
        lo, hi = float(out.min()), float(out.max())
        if hi <= lo:
            raise ValueError(f"pixel data is constant ({lo:g}) and there is no VOI window")
    img = (np.asarray(out, dtype=np.float64) - lo) / (hi - lo)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def invert_if_monochrome1(img: np.ndarray, ds: Any) -> np.ndarray:
    """MONOCHROME1 stores dense tissue dark; flip so that it is bright like MONOCHROME2."""
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        return (1.0 - img).astype(np.float32)
    return img


def read_dicom(
    src: Source, *, crop_roi: bool = True, size: int | None = None, name: str | None = None,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Read a single-frame grayscale DICOM into a float32 2-D array in [0, 1]."""
    label = _label(src, name)
    ds = _read_dataset(src, label)
    arr = decode_pixels(ds, label, max_pixels)
    try:
        img = invert_if_monochrome1(apply_voi(apply_modality(arr, ds), ds), ds)
    except Exception as exc:  # malformed LUTs / windows surface here as pydicom errors
        raise DicomError(f"{label}: cannot apply modality/VOI transform: {exc}") from exc
    return _finish(img, crop_roi, size, label, DicomError)


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
            raise ImageReadError(f"{label}: image has transparency (mode {mode})")
        r, g, b = arr[..., 0], arr[..., 1], arr[..., 2]
        if not (np.array_equal(r, g) and np.array_equal(r, b)):
            raise ImageReadError(f"{label}: colour image (mode {mode}); only grayscale supported")
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
                    raise ImageReadError(f"{label}: {im.n_frames} frames; only single images")
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
    with _open(src, label, DicomError if by_name else ImageReadError) as fp:
        # fp is seekable here, so is_dicom can look at the content; the name was judged above.
        reader = read_dicom if by_name or is_dicom(fp) else read_image
        return reader(fp, crop_roi=crop_roi, size=size, name=label, max_pixels=max_pixels)


# ----------------------------------------------------------------------------- geometry


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
