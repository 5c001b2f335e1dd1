"""Tests of latentds.testing.synthetic: SYNTHETIC phantoms and the DICOM files / datasets built on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

pydicom = pytest.importorskip("pydicom")
from pydicom import dcmread  # noqa: E402
from pydicom.pixels import apply_modality_lut, apply_voi_lut  # noqa: E402

from latentds.testing.synthetic import (  # noqa: E402
    CLASSES,
    SYNTHETIC_LABEL,
    make_dataset,
    phantom,
    write_dicom,
)

KINDS = ("calcification", "fracture")
SYNTAXES = ("explicit-le", "implicit-le", "rle", "jpeg2000-lossless")
TS_UIDS = {
    "explicit-le": "1.2.840.10008.1.2.1",
    "implicit-le": "1.2.840.10008.1.2",
    "rle": "1.2.840.10008.1.2.5",
    "jpeg2000-lossless": "1.2.840.10008.1.2.4.90",
}
SOP_CLASSES = {
    "MG": "1.2.840.10008.5.1.4.1.1.1.2",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
}


# ----------------------------------------------------------------------------- helpers


def displayed(ds) -> np.ndarray:
    """The standard display pipeline: stored -> modality rescale -> VOI window (or the full
    representable modality range when there is none) scaled to [0, 1] -> MONOCHROME1 inversion."""
    arr = ds.pixel_array
    values = apply_modality_lut(arr, ds).astype(np.float64)
    slope = float(ds.get("RescaleSlope", 1.0))
    intercept = float(ds.get("RescaleIntercept", 0.0))
    lo, hi = intercept, intercept + slope * (2 ** ds.BitsStored - 1)
    if "WindowCenter" in ds:
        values = apply_voi_lut(values, ds)  # output spans [lo, hi] (pydicom's y_min / y_max)
    out = (values - lo) / (hi - lo)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        out = 1.0 - out
    return out


def display_tolerance(ds) -> float:
    """Half a quantisation step in display units: stored values are rounded to integers, and
    one stored step is slope/(width-1) of the display through a LINEAR window, or
    1/(2**bits-1) without one. Plus a little float slack."""
    if "WindowWidth" in ds:
        step = float(ds.get("RescaleSlope", 1.0)) / (float(ds.WindowWidth) - 1.0)
    else:
        step = 1.0 / (2 ** ds.BitsStored - 1)
    return 0.5 * step + 1e-9


def area8(x: np.ndarray) -> np.ndarray:
    h, w = x.shape[0] // 8 * 8, x.shape[1] // 8 * 8
    return x[:h, :w].astype(np.float64).reshape(h // 8, 8, w // 8, 8).mean(axis=(1, 3))


def bicubic8(x: np.ndarray) -> np.ndarray:
    h, w = x.shape
    img = Image.fromarray(x.astype(np.float32)).resize((w // 8, h // 8), Image.BICUBIC)
    return np.asarray(img, dtype=np.float64)


def highpass(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x - ndimage.gaussian_filter(x, 2.0)


# ----------------------------------------------------------------------------- phantoms


@pytest.mark.parametrize("kind", KINDS)
def test_phantom_basic_properties(kind):
    for positive in (False, True):
        img = phantom(5, positive=positive, kind=kind)
        assert img.dtype == np.float32 and img.shape == (512, 416)
        assert img.min() >= 0.0 and img.max() <= 1.0
        # dark background (air) at the border, a bright body in the middle
        assert np.median(img[:, -8:]) < 0.1 or np.median(img[:, :8]) < 0.1
        assert np.median(img[200:312, 150:260]) > 0.2
        # mild noise, smooth texture: neighbouring pixels are strongly correlated in the body
        body = img[150:350, 120:300].astype(np.float64)
        assert np.corrcoef(body[:, 1:].ravel(), body[:, :-1].ravel())[0, 1] > 0.8
    small = phantom(1, (128, 96), positive=True, kind=kind)
    assert small.shape == (128, 96)


@pytest.mark.parametrize("kind", KINDS)
def test_phantom_determinism(kind):
    a = phantom(11, positive=True, kind=kind)
    b = phantom(11, positive=True, kind=kind)
    assert np.array_equal(a, b)
    c = phantom(12, positive=True, kind=kind)
    assert not np.array_equal(a, c)
    assert np.abs(a - c).mean() > 0.01  # a different image, not a nudge


def test_phantom_rejects_bad_kind():
    with pytest.raises(ValueError, match="kind"):
        phantom(0, positive=True, kind="tumour")


@pytest.mark.parametrize("kind", KINDS)
def test_positive_differs_only_locally(kind):
    for seed in range(6):
        pos = phantom(seed, positive=True, kind=kind).astype(np.float64)
        neg = phantom(seed, positive=False, kind=kind).astype(np.float64)
        diff = np.abs(pos - neg)
        changed = diff > 1e-6
        assert changed.any(), "the positive must carry a finding"
        ys, xs = np.nonzero(changed)
        # calcification cluster: within ~25 px; fracture line: across one bone, <= ~100 px long
        limit = 30 if kind == "calcification" else 110
        assert ys.max() - ys.min() <= limit and xs.max() - xs.min() <= limit, (np.ptp(ys), np.ptp(xs))
        assert changed.mean() < 0.005  # < 0.5% of the pixels
        assert 0.08 < diff.max() < 0.25  # modest contrast


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("down", [area8, bicubic8], ids=["area", "bicubic"])
def test_finding_visible_at_full_res_lost_at_8x(kind, down):
    """Statistic: local contrast of the finding = mean high-pass (x - gaussian(x, 2 px)) over
    the finding's pixels, positive minus negative of the same seed (signed: bright specks,
    dark line), in the image's own pixel grid. Normalised by the std of the same high-pass
    over the negative's tissue it is a per-pixel SNR against anatomical clutter + noise.
    Measured over seeds 0-99: full-res contrast >= 0.046 (SNR >= 1.67), 8x contrast <= 0.022
    (ratio <= 0.42, SNR <= 0.43); the bounds below leave margin on seeds 0-7."""
    sign = 1.0 if kind == "calcification" else -1.0
    ratios = []
    for seed in range(8):
        pos = phantom(seed, positive=True, kind=kind)
        neg = phantom(seed, positive=False, kind=kind)
        support = np.abs(pos.astype(np.float64) - neg) > 0.02
        support_lo = area8(support.astype(np.float64)) > 0  # low-res pixels touching it
        tissue = neg > 0.15
        tissue_lo = area8(tissue.astype(np.float64)) == 1.0

        full = sign * (highpass(pos)[support].mean() - highpass(neg)[support].mean())
        lo_pos, lo_neg = highpass(down(pos)), highpass(down(neg))
        low = sign * (lo_pos[support_lo].mean() - lo_neg[support_lo].mean())
        snr_full = full / highpass(neg)[tissue].std()
        snr_low = abs(low) / lo_neg[tissue_lo].std()

        assert full > 0.04, (seed, full)
        assert snr_full > 1.2, (seed, snr_full)
        assert low < 0.5 * full, (seed, low, full)
        assert snr_low < 0.6, (seed, snr_low)
        ratios.append(low / full)
    assert np.median(ratios) < 0.3, ratios


@pytest.mark.parametrize("kind", KINDS)
def test_decoys_are_larger_and_shared_by_both_classes(kind, monkeypatch):
    """Decoys (blurry 6-10 px blobs, broad lucent bands) come from the seed, not the class:
    switching them off changes the same pixels of the negative and the positive, and what
    they add is larger than any microcalcification (> 3 px)."""
    import latentds.testing.phantoms as phantoms

    with_decoys = {(s, p): phantom(s, positive=p, kind=kind) for s in range(6) for p in (False, True)}
    monkeypatch.setattr(phantoms, "_decoys", lambda *a, **k: None)
    n_with = 0
    for seed in range(6):
        d_neg = with_decoys[(seed, False)].astype(np.float64) - phantom(seed, positive=False, kind=kind)
        d_pos = with_decoys[(seed, True)].astype(np.float64) - phantom(seed, positive=True, kind=kind)
        if np.abs(d_neg).max() < 1e-6:
            continue
        n_with += 1
        mask = np.abs(d_neg) > 0.02
        assert np.array_equal(mask, np.abs(d_pos) > 0.02)
        labels, n = ndimage.label(mask)
        for sl in ndimage.find_objects(labels):
            assert max(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start) > 3
    assert n_with >= 3


# ----------------------------------------------------------------------------- write_dicom


CASES = [
    # (modality, bits, photometric, rescale, window)
    ("MG", 12, "MONOCHROME2", None, None),
    ("DX", 14, "MONOCHROME1", (0.5, -100.0), None),
    ("CR", 16, "MONOCHROME2", None, (32768.0, 60000.0)),
    ("MG", 12, "MONOCHROME1", (2.0, -1024.0), (3000.0, 6000.0)),
    ("DX", 16, "MONOCHROME1", None, (30000.0, 20000.0)),
]


@pytest.mark.parametrize("transfer_syntax", SYNTAXES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}-r{bool(c[3])}-w{bool(c[4])}")
def test_write_dicom_roundtrip(tmp_path, transfer_syntax, case):
    modality, bits, photometric, rescale, window = case
    image = phantom(3, positive=True)
    kw = dict(modality=modality, bits_stored=bits, photometric=photometric, rescale=rescale, window=window, seed=3)
    ref = write_dicom(tmp_path / "ref.dcm", image, transfer_syntax="explicit-le", **kw)
    path = write_dicom(tmp_path / "sub" / "img.dcm", image, transfer_syntax=transfer_syntax, **kw)
    assert path == tmp_path / "sub" / "img.dcm" and path.read_bytes()[128:132] == b"DICM"

    ref_ds = dcmread(ref)
    stored = np.frombuffer(ref_ds.PixelData, dtype="<u2").reshape(image.shape)
    assert stored.max() <= 2 ** bits - 1

    ds = dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == TS_UIDS[transfer_syntax]
    arr = ds.pixel_array
    assert arr.shape == image.shape
    assert np.array_equal(arr, stored), "lossless: decoded integers must equal the stored ones"

    assert (ds.Rows, ds.Columns) == image.shape
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, bits, bits - 1)
    assert ds.PixelRepresentation == 0 and ds.SamplesPerPixel == 1
    assert ds.PhotometricInterpretation == photometric
    assert ds.Modality == modality and ds.SOPClassUID == SOP_CLASSES[modality]
    assert ds.file_meta.MediaStorageSOPClassUID == SOP_CLASSES[modality]
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID == ref_ds.SOPInstanceUID
    assert ("RescaleSlope" in ds) == (rescale is not None)
    assert ("WindowCenter" in ds) == (window is not None)

    shown = displayed(ds)
    err = np.abs(shown - image.astype(np.float64)).max()
    assert err <= display_tolerance(ds), (err, display_tolerance(ds))


def test_write_dicom_no_window_stores_scaled_image(tmp_path):
    image = phantom(4, positive=False)
    for bits in (12, 16):
        ds = dcmread(write_dicom(tmp_path / f"{bits}.dcm", image, bits_stored=bits))
        expected = np.rint(image.astype(np.float64) * (2 ** bits - 1)).astype(np.uint16)
        assert np.array_equal(ds.pixel_array, expected)
        ds1 = dcmread(write_dicom(tmp_path / f"{bits}m1.dcm", image, bits_stored=bits, photometric="MONOCHROME1"))
        assert np.array_equal(ds1.pixel_array, (2 ** bits - 1) - expected)  # inverted storage


def test_write_dicom_tags_and_determinism(tmp_path):
    image = phantom(7, positive=True, kind="fracture")
    a = write_dicom(tmp_path / "a.dcm", image, modality="CR", transfer_syntax="jpeg2000-lossless", seed=7)
    b = write_dicom(tmp_path / "b.dcm", image, modality="CR", transfer_syntax="jpeg2000-lossless", seed=7)
    c = write_dicom(tmp_path / "c.dcm", image, modality="CR", transfer_syntax="jpeg2000-lossless", seed=8)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    da, dc = dcmread(a), dcmread(c)
    for tag in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        uid = da[tag].value
        assert uid.is_valid and len(uid) <= 64
        assert uid != dc[tag].value
    assert da.SOPInstanceUID not in (da.StudyInstanceUID, da.SeriesInstanceUID)
    assert str(da.PatientName) == "SYNTHETIC^PHANTOM"
    assert da.PatientID == "SYN000000000000007" and dc.PatientID != da.PatientID
    assert da.SeriesDescription == SYNTHETIC_LABEL == "SYNTHETIC - latentds phantom"
    assert da.ImageComments == SYNTHETIC_LABEL
    assert "PatientBirthDate" not in da or not da.PatientBirthDate


def test_write_dicom_rejects_bad_input(tmp_path):
    img = phantom(0, (64, 64), positive=False)
    with pytest.raises(ValueError):
        write_dicom(tmp_path / "x.dcm", img * 2.0 + 0.1)  # outside [0, 1]
    with pytest.raises(ValueError):
        write_dicom(tmp_path / "x.dcm", img[None])  # not 2-D
    with pytest.raises(ValueError):
        write_dicom(tmp_path / "x.dcm", img, modality="CT")
    with pytest.raises(ValueError):
        write_dicom(tmp_path / "x.dcm", img, transfer_syntax="jpeg-baseline")
    with pytest.raises(ValueError):
        write_dicom(tmp_path / "x.dcm", img, photometric="RGB")
    with pytest.raises(ValueError, match="window"):
        write_dicom(tmp_path / "x.dcm", img, bits_stored=12, window=(4000.0, 4000.0))  # beyond 4095
    with pytest.raises(ValueError):
        write_dicom(tmp_path / "x.dcm", img, bits_stored=8, transfer_syntax="rle")


# ----------------------------------------------------------------------------- make_dataset


def test_make_dataset(tmp_path):
    shape = (256, 208)
    items = make_dataset(tmp_path / "a", n_per_class=8, shape=shape, seed=1)
    root = tmp_path / "a"

    assert CLASSES == ("negative", "positive")
    assert sorted(p.name for p in root.iterdir()) == ["README.txt", "findings.csv", "negative", "positive"]
    readme = (root / "README.txt").read_text()
    assert "SYNTHETIC" in readme and "not patient data" in readme.lower()

    assert len(items) == 16 and [p for p, _ in items] == sorted(p for p, _ in items)
    assert all(isinstance(p, Path) and p.is_file() for p, _ in items)
    for cls, name in enumerate(CLASSES):
        files = sorted((root / name).glob("*.dcm"))
        assert len(files) == 8
        assert sorted(p for p, c in items if c == cls) == files
        assert all(f.stem.startswith("s") and len(f.stem) == 6 and f.stem[1:].isdigit() for f in files)
    assert len({p.name for p, _ in items}) == 16  # ids unique across classes

    seen: dict[str, set] = {"ts": set(), "mod": set(), "pi": set(), "bits": set(), "rescale": set(), "window": set()}
    per_class_formats: dict[int, list] = {0: [], 1: []}
    for path, cls in items:
        ds = dcmread(path)
        fmt = (ds.file_meta.TransferSyntaxUID, ds.Modality, ds.PhotometricInterpretation, ds.BitsStored,
               "RescaleSlope" in ds, "WindowCenter" in ds)
        per_class_formats[cls].append(fmt)
        for key, value in zip(seen, fmt):
            seen[key].add(value)
        assert ds.SeriesDescription == SYNTHETIC_LABEL and str(ds.PatientName) == "SYNTHETIC^PHANTOM"
        # end to end: the displayed image is the phantom named by the PatientID seed
        seed = int(ds.PatientID[3:])
        expected = phantom(seed, shape, positive=bool(cls), kind="calcification").astype(np.float64)
        shown = displayed(ds)
        assert np.abs(shown - expected).max() <= display_tolerance(ds)
        assert 0.0 <= shown.min() and shown.max() <= 1.0 + 1e-9

    assert seen["ts"] == set(TS_UIDS.values())
    assert seen["mod"] == {"MG", "DX", "CR"}
    assert seen["pi"] == {"MONOCHROME1", "MONOCHROME2"}
    assert seen["bits"] == {12, 14, 16}
    assert seen["rescale"] == {True, False} and seen["window"] == {True, False}
    # the encoding never predicts the label: both classes get the same formats
    assert per_class_formats[0] == per_class_formats[1]

    # same seed -> byte-identical files; different seed -> different images
    again = make_dataset(tmp_path / "b", n_per_class=8, shape=shape, seed=1)
    other = make_dataset(tmp_path / "c", n_per_class=8, shape=shape, seed=2)
    for (p, c), (q, d), (r, _) in zip(items, again, other):
        assert p.relative_to(root) == q.relative_to(tmp_path / "b") and c == d
        assert p.read_bytes() == q.read_bytes()
        assert p.read_bytes() != r.read_bytes()
    assert (root / "README.txt").read_bytes() == (tmp_path / "b" / "README.txt").read_bytes()


def test_make_dataset_fracture_and_progress(tmp_path, capsys):
    items = make_dataset(tmp_path, n_per_class=2, shape=(128, 104), kind="fracture",
                         transfer_syntaxes=("rle",), modalities=("DX",), bits=(12,), progress=True)
    assert [c for _, c in items] == [0, 0, 1, 1]
    for p, _ in items:
        ds = dcmread(p)
        assert ds.Modality == "DX" and ds.file_meta.TransferSyntaxUID == TS_UIDS["rle"]
    assert "fracture" in (tmp_path / "README.txt").read_text()
    with pytest.raises(ValueError):
        make_dataset(tmp_path / "bad", transfer_syntaxes=("jpeg-ls",))


# ----------------------------------------------------------------------------- graded task


@pytest.mark.parametrize("kind", KINDS)
def test_graded_task_records_each_finding_size(tmp_path, kind):
    """The graded task draws one finding size and contrast per image from GRADED; make_dataset
    records them in findings.csv (0 for negatives), and the area the finding changes grows
    with its recorded size."""
    from latentds.testing.synthetic import GRADED, phantom_with_finding, read_findings

    items = make_dataset(tmp_path, n_per_class=6, shape=(128, 104), kind=kind, graded=True,
                         transfer_syntaxes=("explicit-le",), bits=(16,))
    found = read_findings(tmp_path)
    assert found is not None and len(found) == len(items) == 12
    lo, hi = GRADED[kind]["size"]
    c_lo, c_hi = GRADED[kind]["contrast"]
    for path, cls in items:
        rec = found[path.relative_to(tmp_path).as_posix()]
        assert rec["class"] == cls
        if cls == 0:
            assert rec["size_px"] == 0 and rec["count"] == 0
        else:
            assert lo <= rec["size_px"] <= hi and c_lo <= rec["contrast"] <= c_hi and rec["count"] >= 1
        seed = int(dcmread(path).PatientID[3:])
        _, info = phantom_with_finding(seed, (128, 104), positive=bool(cls), kind=kind, graded=True)
        assert info["size_px"] == pytest.approx(rec["size_px"], abs=1e-4)
    assert "graded" in (tmp_path / "README.txt").read_text()
    assert read_findings(tmp_path / "negative") is None  # a folder without findings.csv

    sizes, areas = [], []
    for seed in range(12):
        pos, info = phantom_with_finding(seed, (192, 160), positive=True, kind=kind, graded=True)
        neg = phantom(seed, (192, 160), positive=False, kind=kind, graded=True)
        sizes.append(info["size_px"])
        areas.append(int((np.abs(pos.astype(np.float64) - neg) > 0.02).sum()))
    assert max(sizes) / min(sizes) > 3  # sizes really spread over the range
    assert np.corrcoef(np.log(sizes), np.log(np.maximum(areas, 1)))[0, 1] > 0.6


def test_graded_sizes_span_the_downsizing_factors():
    """Log-uniform sizes over GRADED's range: some findings survive f=4, fewer f=8 and f=16."""
    from latentds.testing.phantoms import GRADED, _graded_draw

    rng = np.random.default_rng(0)
    sizes = np.array([_graded_draw(rng, "calcification")[0] for _ in range(2000)])
    lo, hi = GRADED["calcification"]["size"]
    assert sizes.min() >= lo and sizes.max() <= hi
    frac = [(sizes >= f).mean() for f in (4, 8, 16)]
    assert frac[0] > frac[1] > frac[2] > 0.05 and frac[0] < 0.95
