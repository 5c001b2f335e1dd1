"""DICOM decoding for :mod:`latentds.preprocess` (paper, appendix A.1)::

    decode_pixels -> apply_modality -> apply_voi -> invert_if_monochrome1 -> crop / resize

Each stage is a small pure function so it can be tested against pydicom's own LUT code. The
decisions (what is refused and why, memory bounded before decoding) are listed in
:mod:`latentds.preprocess`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from latentds._imagefile import Source, _finish, _label, _looks_like_raw_dataset, _open, pixel_limit
from latentds.errors import DicomError, LatentdsError

__all__ = ["apply_modality", "apply_voi", "decode_pixels", "invert_if_monochrome1", "read_dicom"]

_REQUIRED = (
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "SamplesPerPixel",
    "PhotometricInterpretation",
)


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
        raise DicomError(f"{name}: {frames} frames; only single-frame images are supported: write one file per "
                         "frame (e.g. with pydicom), or move it out of the tree")
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomError(
            f"{name}: colour image (PhotometricInterpretation {photometric!r}, SamplesPerPixel "
            f"{samples}); only grayscale MONOCHROME1/MONOCHROME2 is supported: convert it to grayscale "
            "first, or move it out of the tree"
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
