"""Tests for latentds.preprocess on pydicom's real test files and on files made here."""

from __future__ import annotations

import io
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import uid
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder

from latentds import preprocess as pp
from latentds.errors import DicomError, ImageReadError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns on odd files


def td(name: str) -> str:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} not installed"
    return str(path)


def dataset(name: str) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(td(name))


def make_ds(
    arr: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    **attrs: object,
) -> Dataset:
    """A minimal single-frame grayscale Secondary Capture holding ``arr``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.SOPClassUID = uid.SecondaryCaptureImageStorage
    ds.SOPInstanceUID = uid.generate_uid()
    ds.Modality = "OT"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(arr.dtype.kind == "i")
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    return ds


def save(ds: Dataset, path: Path) -> str:
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def ramp(shape: tuple[int, int] = (32, 48), hi: int = 4095) -> np.ndarray:
    return np.linspace(0, hi, shape[0] * shape[1]).round().astype(np.uint16).reshape(shape)


def full(path: str | Path, **kw: object) -> np.ndarray:
    return pp.read_dicom(path, crop_roi=False, **kw)


def check_output(img: np.ndarray) -> None:
    assert img.dtype == np.float32 and img.ndim == 2 and img.flags.c_contiguous
    assert 0.0 <= img.min() and img.max() <= 1.0


# ----------------------------------------------------------------------------- real files


def test_modality_lut_sequence_matches_pydicom() -> None:
    ds = dataset("mlut_18.dcm")
    arr = pp.decode_pixels(ds, "mlut_18.dcm")
    np.testing.assert_array_equal(arr, ds.pixel_array)
    out = pp.apply_modality(arr, ds)
    np.testing.assert_array_equal(out, apply_modality_lut(ds.pixel_array, ds))
    assert not np.array_equal(out, arr)  # the LUT really changed the values


def test_rescale_matches_pydicom_and_formula() -> None:
    ds = dataset("CT_small.dcm")
    arr = pp.decode_pixels(ds, "CT_small.dcm")
    out = pp.apply_modality(arr, ds)
    np.testing.assert_array_equal(out, apply_modality_lut(arr, ds))
    np.testing.assert_array_equal(out, arr * float(ds.RescaleSlope) + float(ds.RescaleIntercept))


def test_voi_lut_sequence_matches_pydicom() -> None:
    ds = dataset("vlut_04.dcm")
    arr = pp.decode_pixels(ds, "vlut_04.dcm")
    img = pp.apply_voi(pp.apply_modality(arr, ds), ds)
    bits = ds.VOILUTSequence[0].LUTDescriptor[2]
    expected = apply_voi_lut(arr, ds) / (2**bits - 1)
    assert img.dtype == np.float32
    np.testing.assert_allclose(img, expected, atol=1e-6)
    assert img.min() == 0.0 and img.max() == 1.0


def test_window_matches_pydicom_signed_mr() -> None:
    ds = dataset("MR_small.dcm")  # signed 16 bit, window 600/1600, no rescale
    arr = pp.decode_pixels(ds, "MR_small.dcm")
    img = pp.apply_voi(pp.apply_modality(arr, ds), ds)
    y_min, y_max = -(2**15), 2**15 - 1  # pydicom's output range for signed 16-bit stored
    np.testing.assert_allclose(img, (apply_voi_lut(arr, ds) - y_min) / (y_max - y_min), atol=1e-6)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    np.testing.assert_allclose(img, np.clip((arr - (c - 0.5)) / (w - 1) + 0.5, 0, 1), atol=1e-6)


def test_window_after_rescale_real_ct() -> None:
    ds = dataset("693_UNCR.dcm")  # CT: rescale -1024, window 40/100 in HU
    img = full(td("693_UNCR.dcm"))
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    c, w = float(ds.WindowCenter[0] if ds["WindowCenter"].VM > 1 else ds.WindowCenter), float(
        ds.WindowWidth[0] if ds["WindowWidth"].VM > 1 else ds.WindowWidth
    )
    np.testing.assert_allclose(img, np.clip((hu - (c - 0.5)) / (w - 1) + 0.5, 0, 1), atol=1e-5)
    assert 0.05 < (img == 0).mean() < 0.95 and (img == 1).any()  # really windowed


def test_real_monochrome1_radiograph_is_inverted() -> None:
    ds = dataset("RG3_UNCR.dcm")  # CR, MONOCHROME1, window 550/1024
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    windowed = np.clip((ds.pixel_array - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(full(td("RG3_UNCR.dcm")), 1 - windowed, atol=1e-5)


# ----------------------------------------------------------------------------- generated files


def test_generated_rescale_and_linear_window(tmp_path: Path) -> None:
    arr = ramp()
    ds = make_ds(arr, bits_stored=12, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=1000,
                 WindowWidth=500)
    img = full(save(ds, tmp_path / "a.dcm"))
    v = arr * 2.0 - 100
    np.testing.assert_allclose(img, np.clip((v - 999.5) / 499 + 0.5, 0, 1), atol=1e-6)
    check_output(img)


def test_generated_sigmoid_window(tmp_path: Path) -> None:
    arr = ramp()
    ds = make_ds(arr, bits_stored=12, WindowCenter=2000, WindowWidth=800, VOILUTFunction="SIGMOID")
    img = full(save(ds, tmp_path / "s.dcm"))
    np.testing.assert_allclose(img, 1 / (1 + np.exp(-4 * (arr - 2000.0) / 800)), atol=1e-6)
    assert not np.allclose(img, np.clip((arr - 1999.5) / 799 + 0.5, 0, 1), atol=1e-3)


def test_generated_linear_exact_window(tmp_path: Path) -> None:
    arr = ramp()
    ds = make_ds(arr, bits_stored=12, WindowCenter=2000, WindowWidth=800,
                 VOILUTFunction="LINEAR_EXACT")
    img = full(save(ds, tmp_path / "le.dcm"))
    np.testing.assert_allclose(img, np.clip((arr - 2000.0) / 800 + 0.5, 0, 1), atol=1e-6)


def test_generated_window_on_signed_data_with_negative_slope(tmp_path: Path) -> None:
    arr = (ramp() - 2048).astype(np.int16)
    ds = make_ds(arr, bits_stored=12, RescaleSlope=-1, RescaleIntercept=0, WindowCenter=0,
                 WindowWidth=1000)
    img = full(save(ds, tmp_path / "neg.dcm"))
    expected = np.clip((-arr.astype(float) + 0.5) / 999 + 0.5, 0, 1)
    np.testing.assert_allclose(img, expected, atol=1e-6)


def test_no_window_uses_full_data_range(tmp_path: Path) -> None:
    arr = ramp(hi=1000) + 100
    img = full(save(make_ds(arr, bits_stored=12), tmp_path / "r.dcm"))
    np.testing.assert_allclose(img, (arr - 100.0) / 1000.0, atol=1e-6)


def test_constant_image_without_window_raises(tmp_path: Path) -> None:
    path = save(make_ds(np.full((8, 8), 7, np.uint16)), tmp_path / "flat.dcm")
    with pytest.raises(DicomError, match="flat.dcm.*constant"):
        full(path)


def test_monochrome1_bright_where_stored_values_low(tmp_path: Path) -> None:
    arr = np.full((40, 50), 4000, np.uint16)
    arr[10:30, 15:35] = 100  # low stored values = dense tissue in MONOCHROME1
    img1 = full(save(make_ds(arr, "MONOCHROME1", 12), tmp_path / "m1.dcm"))
    img2 = full(save(make_ds(arr, "MONOCHROME2", 12), tmp_path / "m2.dcm"))
    assert np.all(img1[10:30, 15:35] == 1.0) and img1[0, 0] == 0.0
    np.testing.assert_allclose(img1, 1 - img2, atol=1e-7)
    # ...and the ROI crop then finds the (bright) dense region
    np.testing.assert_array_equal(pp.read_dicom(tmp_path / "m1.dcm"), np.ones((20, 20), np.float32))


def test_invert_stage_only_touches_monochrome1() -> None:
    img = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(pp.invert_if_monochrome1(img, make_ds(ramp((3, 4)))), img)
    np.testing.assert_allclose(
        pp.invert_if_monochrome1(img, make_ds(ramp((3, 4)), "MONOCHROME1")), 1 - img
    )


# ----------------------------------------------------------------------------- transfer syntaxes


TWINS = [
    ("MR_small.dcm", "MR_small_RLE.dcm"),
    ("MR_small.dcm", "MR_small_jp2klossless.dcm"),
    ("MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm"),
    ("MR_small.dcm", "MR_small_bigendian.dcm"),
    ("MR_small.dcm", "MR_small_expb.dcm"),
    ("MR_small.dcm", "MR_small_implicit.dcm"),
    ("MR_small.dcm", "MR_small_padded.dcm"),
    ("JPEG2000_UNC.dcm", "JPEG2000.dcm"),
    ("693_UNCR.dcm", "693_J2KR.dcm"),
    ("693_UNCI.dcm", "693_J2KI.dcm"),
    ("MR2_UNCR.dcm", "MR2_J2KR.dcm"),
    ("MR2_UNCI.dcm", "MR2_J2KI.dcm"),
    ("RG3_UNCR.dcm", "RG3_J2KR.dcm"),
    ("RG3_UNCI.dcm", "RG3_J2KI.dcm"),
]


@pytest.mark.parametrize(("plain", "encoded"), TWINS)
def test_encoded_twin_decodes_to_same_image(plain: str, encoded: str) -> None:
    a, b = dataset(plain), dataset(encoded)
    assert Path(td(plain)).read_bytes() != Path(td(encoded)).read_bytes()
    np.testing.assert_array_equal(pp.decode_pixels(a, plain), pp.decode_pixels(b, encoded))
    out = pp.read_dicom(td(encoded))
    np.testing.assert_array_equal(out, pp.read_dicom(td(plain)))
    check_output(out)
    assert out.std() > 0.05  # a real image, not a blank one


@pytest.mark.parametrize("tsyntax", [uid.RLELossless, uid.JPEG2000Lossless])
def test_generated_compressed_twin(tmp_path: Path, tsyntax: uid.UID) -> None:
    arr = ramp((40, 56))
    attrs = dict(RescaleSlope=1, RescaleIntercept=-50, WindowCenter=1500, WindowWidth=2000)
    plain = save(make_ds(arr, "MONOCHROME1", 12, **attrs), tmp_path / "plain.dcm")
    ds = make_ds(arr, "MONOCHROME1", 12, **attrs)
    ds.compress(tsyntax)
    packed = save(ds, tmp_path / "packed.dcm")
    np.testing.assert_array_equal(full(packed), full(plain))


def test_jpeg_baseline_matches_pillow_decode(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:64, 0:80]
    gray = (40 + 150 * np.exp(-((yy - 32) ** 2 + (xx - 40) ** 2) / 400)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, format="JPEG", quality=90)
    decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
    ds = make_ds(gray)
    ds.file_meta.TransferSyntaxUID = uid.JPEGBaseline8Bit
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    img = full(save(ds, tmp_path / "jpg.dcm"))
    expected = (decoded - float(decoded.min())) / (decoded.max() - float(decoded.min()))
    np.testing.assert_allclose(img, expected, atol=2 / 255)


def test_every_pydicom_test_file_reads_or_raises_dicom_error() -> None:
    """No file in pydicom's test set escapes as another exception or as a bad array."""
    paths = [p for p in get_testdata_files() if os.path.isfile(p) and "dicomdirtests" not in p]
    assert len(paths) > 100
    n_ok = 0
    for path in paths:
        try:
            img = pp.read_dicom(path)
        except DicomError as exc:
            assert path in str(exc), str(exc)
        else:
            check_output(img)
            n_ok += 1
    assert 30 < n_ok < len(paths) - 50


# ----------------------------------------------------------------------------- broken / unsupported


BROKEN = [
    ("MR_truncated.dcm", "truncated"),
    ("emri_small_jpeg_2k_lossless_too_short.dcm", "no Pixel Data"),
    ("rtplan.dcm", "no Pixel Data"),
    ("rtplan_truncated.dcm", "no Pixel Data"),
    ("rtstruct.dcm", "no Pixel Data"),  # also has no preamble
    ("ExplVR_LitEndNoMeta.dcm", "no Pixel Data"),
    ("ExplVR_BigEndNoMeta.dcm", "no Pixel Data"),
    ("test-SR.dcm", "no Pixel Data"),
    ("reportsi.dcm", "no Pixel Data"),
    ("reportsi_with_empty_number_tags.dcm", "no Pixel Data"),
    ("waveform_ecg.dcm", "no Pixel Data"),
    ("UN_sequence.dcm", "no Pixel Data"),
    ("empty_charset_LEI.dcm", "no Pixel Data"),
    ("priv_SQ.dcm", "no Pixel Data"),
    ("no_meta_group_length.dcm", "no Pixel Data"),
    ("nested_priv_SQ.dcm", "missing required"),
    ("meta_missing_tsyntax.dcm", "missing required"),
    ("badVR.dcm", "invalid NumberOfFrames"),
    ("JPEG-lossy.dcm", "cannot decode"),
    ("JPEG2000-embedded-sequence-delimiter.dcm", "refused before decoding"),  # SIZ size != Rows x Columns
    ("no_meta.dcm", "not a DICOM"),
    ("crayons.icc", "not a DICOM"),
    ("zipMR.gz", "not a DICOM"),
    ("rtplan.dump", "not a DICOM"),
    ("test1.json", "not a DICOM"),
    ("liver_1frame.dcm", "1-bit"),
    ("SC_rgb.dcm", "colour"),
    ("SC_rgb_16bit.dcm", "colour"),
    ("SC_rgb_expb_32bit.dcm", "colour"),
    ("SC_rgb_jpeg.dcm", "colour"),
    ("SC_rgb_jpeg_dcmtk.dcm", "colour"),
    ("SC_rgb_rle.dcm", "colour"),
    ("SC_rgb_jls_lossy_line.dcm", "colour"),
    ("SC_rgb_gdcm_KY.dcm", "colour"),
    ("SC_ybr_full_uncompressed.dcm", "colour"),
    ("SC_rgb_small_odd_jpeg.dcm", "colour"),
    ("US1_J2KR.dcm", "colour"),
    ("GDCMJ2K_TextGBR.dcm", "colour"),
    ("ExplVR_BigEnd.dcm", "colour"),
    ("OBXXXX1A.dcm", "colour"),  # palette
    ("OT-PAL-8-face.dcm", "colour"),  # palette, no preamble
    ("gdcm-US-ALOKA-16.dcm", "colour"),
    ("examples_palette.dcm", "colour"),
    ("emri_small.dcm", "10 frames"),
    ("emri_small_RLE.dcm", "10 frames"),
    ("emri_small_big_endian.dcm", "10 frames"),
    ("emri_small_jpeg_ls_lossless.dcm", "10 frames"),
    ("emri_small_jpeg_2k_lossless.dcm", "10 frames"),
    ("eCT_Supplemental.dcm", "2 frames"),
    ("rtdose.dcm", "15 frames"),
    ("liver.dcm", "3 frames"),
    ("color3d_jpeg_baseline.dcm", "120 frames"),
    ("OBXXXX1A_2frame.dcm", "2 frames"),
    ("SC_rgb_rle_2frame.dcm", "2 frames"),
]


@pytest.mark.parametrize(("name", "reason"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_pydicom_file_raises_naming_it(name: str, reason: str) -> None:
    with pytest.raises(DicomError) as info:
        pp.read_dicom(td(name))
    assert name in str(info.value) and reason in str(info.value)


def test_broken_stream_is_named_by_name_argument() -> None:
    data = Path(td("MR_truncated.dcm")).read_bytes()
    with pytest.raises(DicomError, match=r"^case-7/MR_truncated\.dcm: .*truncated"):
        pp.load_image(io.BytesIO(data), name="case-7/MR_truncated.dcm")
    with pytest.raises(DicomError, match=r"^<stream>: "):
        pp.read_dicom(io.BytesIO(data))


def test_cut_native_pixel_data_raises(tmp_path: Path) -> None:
    path = Path(save(make_ds(ramp()), tmp_path / "cut.dcm"))
    data = path.read_bytes()
    for cut in (2, 100, len(ramp().tobytes()) - 10):
        path.write_bytes(data[:-cut])
        with pytest.raises(DicomError, match="cut.dcm"):
            full(path)
    path.write_bytes(data[:200])  # cut inside the header
    with pytest.raises(DicomError, match="cut.dcm"):
        full(path)


@pytest.mark.parametrize("tsyntax", [uid.RLELossless, uid.JPEG2000Lossless])
def test_cut_compressed_file_raises(tmp_path: Path, tsyntax: uid.UID) -> None:
    ds = make_ds(ramp((64, 64)), bits_stored=12)
    ds.compress(tsyntax)
    path = Path(save(ds, tmp_path / "cut.dcm"))
    data = path.read_bytes()
    for cut in (30, 300):
        path.write_bytes(data[:-cut])
        with pytest.raises(DicomError, match="cut.dcm"):
            full(path)


@pytest.mark.parametrize("name", ["MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                  "JPGExtended.dcm", "JPEG-LL.dcm"])
def test_cut_codestream_in_valid_encapsulation_raises(tmp_path: Path, name: str) -> None:
    # JPEG and JPEG-LS decoders silently return a half-decoded image for this.
    ds = dataset(name)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: int(len(frame) * 0.7)]])
    with pytest.raises(DicomError, match="cutframe.dcm"):
        full(save(ds, tmp_path / "cutframe.dcm"))


def test_extra_frame_of_native_data_raises(tmp_path: Path) -> None:
    ds = make_ds(ramp())
    ds.PixelData = ds.PixelData * 2  # two frames' worth but NumberOfFrames absent
    with pytest.raises(DicomError, match="x2.dcm.*NumberOfFrames"):
        full(save(ds, tmp_path / "x2.dcm"))


def test_unsupported_transfer_syntax_raises(tmp_path: Path) -> None:
    ds = make_ds(ramp())
    ds.file_meta.TransferSyntaxUID = uid.MPEG2MPML
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    with pytest.raises(DicomError, match="video.dcm.*unsupported transfer syntax"):
        full(save(ds, tmp_path / "video.dcm"))


def test_missing_decoder_plugin_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(get_decoder(uid.JPEGLSLossless), "_available", {})
    with pytest.raises(DicomError, match="MR_small_jpeg_ls_lossless.dcm.*no decoder"):
        full(td("MR_small_jpeg_ls_lossless.dcm"))


def test_bad_vr_value_raises(tmp_path: Path) -> None:
    path = Path(save(make_ds(ramp(), NumberOfFrames=2), tmp_path / "badnf.dcm"))
    element = b"\x28\x00\x08\x00IS\x02\x002 "
    data = path.read_bytes()
    assert data.count(element) == 1
    path.write_bytes(data.replace(element, element[:-2] + b"2X"))  # IS value "2X"
    with pytest.raises(DicomError, match="badnf.dcm.*NumberOfFrames"):
        full(path)


def test_file_without_preamble_is_read(tmp_path: Path) -> None:
    ds = make_ds(ramp(), bits_stored=12, WindowCenter=1000, WindowWidth=1500)
    with_preamble = save(ds, tmp_path / "p.dcm")
    raw = tmp_path / "raw_no_extension"
    del ds.file_meta
    ds.save_as(raw, implicit_vr=True, little_endian=True)  # no preamble, no file meta
    assert Path(raw).read_bytes()[:2] == b"\x08\x00"
    assert pp.is_dicom(raw)
    np.testing.assert_array_equal(pp.load_image(raw, crop_roi=False), full(with_preamble))


# ----------------------------------------------------------------------------- ROI and resize


def test_roi_bbox_is_bright_region() -> None:
    img = np.zeros((100, 80), np.float32)
    img[20:60, 10:50] = np.linspace(0.5, 0.9, 40, dtype=np.float32)
    assert pp.roi_bbox(img) == (slice(20, 60), slice(10, 50))
    np.testing.assert_array_equal(pp.crop_roi(img), img[20:60, 10:50])


def test_roi_keeps_whole_foreground_and_degenerate_masks_keep_all() -> None:
    img = np.full((50, 60), 0.05, np.float32)
    img[5:15, 5:20] = 0.9
    img[30:45, 40:55] = 0.7  # a second, separate structure (e.g. a marker)
    assert pp.roi_bbox(img) == (slice(5, 45), slice(5, 55))
    assert pp.roi_bbox(np.zeros((7, 9), np.float32)) == (slice(0, 7), slice(0, 9))
    dot = np.zeros((30, 30), np.float32)
    dot[4, 7] = 1.0
    assert pp.roi_bbox(dot) == (slice(0, 30), slice(0, 30))


def test_read_dicom_crops_dark_border_unless_disabled(tmp_path: Path) -> None:
    arr = np.zeros((64, 96), np.uint16)
    arr[8:40, 30:90] = ramp((32, 60), hi=1000) + 2000  # all well above the threshold
    path = save(make_ds(arr, bits_stored=12), tmp_path / "border.dcm")
    assert pp.read_dicom(path).shape == (32, 60)
    assert pp.read_dicom(path, crop_roi=False).shape == (64, 96)


def test_resize_longest_keeps_aspect_and_antialiases() -> None:
    noise = np.random.default_rng(0).random((400, 200), dtype=np.float32)  # std 0.29
    out = pp.resize_longest(noise, 50)
    assert out.shape == (50, 25)
    check_output(out)
    assert abs(out.mean() - noise.mean()) < 0.01
    assert out.std() < 0.06  # 8x8 averaging; plain bicubic sampling keeps std ~0.2
    up = pp.resize_longest(np.linspace(0, 1, 30 * 20, dtype=np.float32).reshape(30, 20), 90)
    assert up.shape == (90, 60)
    check_output(up)


def test_size_option_sets_longest_side(tmp_path: Path) -> None:
    arr = ramp((50, 120), hi=3000) + 500
    path = save(make_ds(arr, bits_stored=12), tmp_path / "wide.dcm")
    out = pp.read_dicom(path, crop_roi=False, size=48)
    assert out.shape == (20, 48)
    check_output(out)
    assert pp.read_dicom(td("MR_small.dcm"), crop_roi=False, size=200).shape == (200, 200)


def test_preprocess_config() -> None:
    cfg = pp.Preprocess(crop_roi=False, size=64)
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d == {"version": pp.PIPELINE_VERSION, "crop_roi": False,
                                              "size": 64}
    assert isinstance(d["version"], int)
    assert pp.Preprocess().to_dict() != d and hash(cfg) == hash(pp.Preprocess(False, 64))
    np.testing.assert_array_equal(cfg(td("CT_small.dcm")),
                                  pp.load_image(td("CT_small.dcm"), crop_roi=False, size=64))
    with pytest.raises(ValueError):
        pp.Preprocess(size=0)
    with pytest.raises(Exception):
        cfg.size = 3  # type: ignore[misc]


# ----------------------------------------------------------------------------- PNG / JPEG / TIFF


def test_png_8bit_round_trip(tmp_path: Path) -> None:
    arr = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(arr).save(tmp_path / "a.png")
    img = pp.read_image(tmp_path / "a.png", crop_roi=False)
    check_output(img)
    np.testing.assert_allclose(img, arr / 255.0, rtol=0, atol=1e-7)


@pytest.mark.parametrize(("suffix", "dtype"), [(".png", "<u2"), (".tif", "<u2"), (".tiff", ">u2")])
def test_16bit_round_trip(tmp_path: Path, suffix: str, dtype: str) -> None:
    arr = (np.arange(12 * 20, dtype=np.uint64) * 274 % 65536).astype(dtype).reshape(12, 20)
    arr[0, 0], arr[-1, -1] = 0, 65535
    Image.fromarray(arr).save(tmp_path / f"b{suffix}")
    img = pp.load_image(tmp_path / f"b{suffix}", crop_roi=False)
    check_output(img)
    np.testing.assert_allclose(img, arr.astype(np.float64) / 65535.0, rtol=0, atol=1e-7)


def test_jpeg_grayscale_and_identical_rgb_channels(tmp_path: Path) -> None:
    arr = np.tile(np.linspace(0, 255, 64), (48, 1)).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "g.jpg", quality=95)
    np.testing.assert_allclose(pp.read_image(tmp_path / "g.jpg", crop_roi=False), arr / 255,
                               atol=4 / 255)
    Image.fromarray(np.stack([arr] * 3, axis=-1)).save(tmp_path / "rgb.png")
    np.testing.assert_allclose(pp.read_image(tmp_path / "rgb.png", crop_roi=False), arr / 255,
                               atol=1e-7)


def test_colour_and_transparent_images_raise(tmp_path: Path) -> None:
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "colour.png")
    with pytest.raises(ImageReadError, match="colour.png.*colour") as info:
        pp.load_image(tmp_path / "colour.png")
    assert not isinstance(info.value, DicomError)
    rgba = np.full((8, 8, 4), 100, np.uint8)
    rgba[..., 3] = 10
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    with pytest.raises(ImageReadError, match="alpha.png.*transparency"):
        pp.read_image(tmp_path / "alpha.png")


def test_truncated_and_non_images_raise(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="t.png"):
        pp.read_image(tmp_path / "t.png")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ImageReadError, match="notes.txt"):
        pp.load_image(tmp_path / "notes.txt")
    with pytest.raises(ImageReadError, match="missing.png.*cannot open"):
        pp.load_image(tmp_path / "missing.png")


def test_streams_and_names(tmp_path: Path) -> None:
    arr = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    Image.fromarray(arr).save(tmp_path / "s.png")
    data = (tmp_path / "s.png").read_bytes()
    expected = arr / 255.0

    class OneWay(io.RawIOBase):  # a non-seekable stream, like an HTTP body
        def __init__(self, payload: bytes) -> None:
            self._buf = io.BytesIO(payload)

        def readable(self) -> bool:
            return True

        def readinto(self, b: bytearray) -> int:  # type: ignore[override]
            return self._buf.readinto(b)

    for src in (io.BytesIO(data), OneWay(data), open(tmp_path / "s.png", "rb")):
        np.testing.assert_allclose(pp.load_image(src, crop_roi=False), expected, atol=1e-7)
    (tmp_path / "junk.png").write_bytes(data[:40])
    with open(tmp_path / "junk.png", "rb") as fp:  # the file object's .name is used in errors
        with pytest.raises(ImageReadError, match="junk.png"):
            pp.read_image(fp)
    with pytest.raises(ImageReadError, match="^<stream>: "):
        pp.read_image(io.BytesIO(data[:40]))


def test_fsspec_file_object(tmp_path: Path) -> None:
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    fs.pipe("/bucket/ct.dcm", Path(td("CT_small.dcm")).read_bytes())
    fs.pipe("/bucket/bad.dcm", b"not a dicom at all" * 20)
    with fs.open("/bucket/ct.dcm", "rb") as fp:
        np.testing.assert_array_equal(pp.load_image(fp), pp.load_image(td("CT_small.dcm")))
    with fs.open("/bucket/bad.dcm", "rb") as fp, pytest.raises(DicomError, match="bucket/bad.dcm"):
        pp.load_image(fp)


def test_load_image_dispatch(tmp_path: Path) -> None:
    src = td("MR_small.dcm")
    expected = pp.read_dicom(src)
    noext = tmp_path / "scan"  # DICOM recognised by its DICM marker
    shutil.copy(src, noext)
    assert pp.is_dicom(noext) and pp.is_dicom(src)
    np.testing.assert_array_equal(pp.load_image(noext), expected)
    np.testing.assert_array_equal(pp.load_image(io.BytesIO(Path(src).read_bytes())), expected)
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(tmp_path / "x.png")
    assert not pp.is_dicom(tmp_path / "x.png")
    shutil.copy(tmp_path / "x.png", tmp_path / "x.dcm")  # the extension says DICOM
    assert pp.is_dicom(tmp_path / "x.dcm")
    with pytest.raises(DicomError, match="x.dcm.*not a DICOM"):
        pp.load_image(tmp_path / "x.dcm")
    assert set(pp.DICOM_EXTENSIONS) == {".dcm", ".dicom"}
    assert set(pp.IMAGE_EXTENSIONS) == {".png", ".jpg", ".jpeg", ".tif", ".tiff"}


def test_unsupported_images_say_how_to_fix_them(tmp_path: Path) -> None:
    """A file latentds cannot encode says what to do about it, not only what is wrong (H3 audit:
    a colour JPEG, an RGBA PNG, a multi-frame or colour DICOM and a zero-byte file, as a user's
    tree holds them, each said what was wrong and nothing about the way out)."""
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "colour.jpg")
    with pytest.raises(ImageReadError, match=r"colour.jpg: colour .*convert it to grayscale"):
        pp.load_image(tmp_path / "colour.jpg")
    rgba = np.full((8, 8, 4), 100, np.uint8)
    rgba[..., 3] = 10
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    with pytest.raises(ImageReadError, match=r"alpha.png: .*transparency.*opaque"):
        pp.load_image(tmp_path / "alpha.png")
    frames = np.stack([ramp(), ramp()])
    ds = make_ds(ramp(), NumberOfFrames=2)
    ds.PixelData = frames.tobytes()
    with pytest.raises(DicomError, match=r"multi.dcm: 2 frames.*one file per frame"):
        pp.load_image(save(ds, tmp_path / "multi.dcm"))
    ds = make_ds(ramp())
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.Rows, ds.Columns = 4, 4
    ds.PixelData = np.zeros((4, 4, 3), np.uint8).tobytes()
    with pytest.raises(DicomError, match=r"rgb.dcm: colour .*convert it to grayscale"):
        pp.load_image(save(ds, tmp_path / "rgb.dcm"))
    for name, error in (("empty.png", ImageReadError), ("empty.dcm", DicomError)):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(error, match=rf"{name}: empty file \(0 bytes\).*copy it again"):
            pp.load_image(tmp_path / name)
