"""Issue 11, hostile inputs: bounded memory on crafted images (item 3), no path escapes through
crafted manifests (item 4), non-regular files (item 8), typed errors for bad offsets (item 10)."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latentds import DicomError
from latentds import preprocess as pp


def _tiny_jpeg(h: int = 8, w: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.arange(h * w).reshape(h, w) % 251).astype(np.uint8), mode="L").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _patch_sof(jpeg: bytes, rows: int, cols: int) -> bytes:
    """The same JPEG whose frame header (SOF0) claims ``rows`` x ``cols``."""
    i = jpeg.index(b"\xff\xc0")
    return jpeg[:i + 5] + rows.to_bytes(2, "big") + cols.to_bytes(2, "big") + jpeg[i + 9:]


def hostile_dicom(path: Path, rows: int, cols: int, frame: bytes) -> Path:
    """A small DICOM declaring ``rows`` x ``cols`` over the given JPEG baseline frame."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_sound_compressed_dicom_still_decodes(tmp_path: Path) -> None:
    p = hostile_dicom(tmp_path / "ok.dcm", 8, 8, _tiny_jpeg())
    img = pp.load_image(p, crop_roi=False)
    assert img.shape == (8, 8)


def test_970_byte_dicom_declaring_30000_squared_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    p = hostile_dicom(tmp_path / "bomb.dcm", 30000, 30000, _tiny_jpeg())
    assert p.stat().st_size < 1200
    # in a child process capped at 1.5 GB of address space: the old code allocated 23 GB here
    # (an OOM kill of the whole process); a refusal must come before any decoder runs
    code = textwrap.dedent(f"""
        import resource, sys
        from latentds import preprocess as pp
        from latentds.errors import DicomError
        import pydicom.pixels, PIL.Image  # decoders loaded before the cap: it limits new allocations
        vm = next(int(l.split()[1]) << 10 for l in open("/proc/self/status") if l.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (vm + (1536 << 20), vm + (1536 << 20)))
        try:
            pp.load_image({str(p)!r})
        except DicomError as exc:
            print("REFUSED", exc)
            sys.exit(0)
        except MemoryError:
            print("MEMORY")
            sys.exit(3)
        print("DECODED")
        sys.exit(4)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (r.stdout, r.stderr[-2000:])
    assert "bomb.dcm" in r.stdout and "30000x30000" in r.stdout and "limit" in r.stdout


def test_header_and_codestream_sizes_must_agree(tmp_path: Path) -> None:
    # a 4000x4000 header over a tiny JPEG that ends in EOI used to decode into a garbage image
    p = hostile_dicom(tmp_path / "liar.dcm", 4000, 4000, _tiny_jpeg())
    with pytest.raises(DicomError, match=r"liar\.dcm: the compressed frame is 8x8 .* Rows=4000 Columns=4000"):
        pp.load_image(p)
    # a tiny header over a frame that claims to be huge: the decoder would size from the frame
    p = hostile_dicom(tmp_path / "liar2.dcm", 8, 8, _patch_sof(_tiny_jpeg(), 30000, 30000))
    with pytest.raises(DicomError, match=r"liar2\.dcm: the compressed frame is 30000x30000"):
        pp.load_image(p)


def test_pixel_limit_is_configurable_and_covers_png(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    png = tmp_path / "big.png"
    Image.fromarray(np.zeros((300, 200), np.uint8), mode="L").save(png)
    assert pp.load_image(png, crop_roi=False).shape == (300, 200)
    with pytest.raises(pp.ImageReadError, match=r"big\.png: declares 200x300 = 60,000 pixels, over the limit of 50,000"):
        pp.load_image(png, max_pixels=50_000)
    monkeypatch.setenv("LATENTDS_MAX_PIXELS", "100")
    p = hostile_dicom(tmp_path / "small.dcm", 8, 16, _tiny_jpeg(8, 16))
    with pytest.raises(DicomError, match=r"small\.dcm: declares 8x16 = 128 pixels, over the limit of 100"):
        pp.load_image(p)
    assert pp.Preprocess(max_pixels=1000)(p).shape[1] <= 16  # an explicit limit wins over the env
    # the limit is not part of the fingerprint: it never changes an accepted image
    assert pp.Preprocess(max_pixels=5).to_dict() == pp.Preprocess().to_dict()
