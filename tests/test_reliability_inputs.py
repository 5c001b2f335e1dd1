"""Issue 11, hostile inputs: bounded memory on crafted images (item 3), no path escapes through
crafted manifests (item 4), non-regular files (item 8), typed errors for bad offsets (item 10)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

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


# -- item 4: names read from the store never become paths outside it ---------------------------

def _crafted_cache(tmp_path: Path, shard: str | None = None, generation: str | None = None) -> tuple[Any, Path]:
    """A real cache whose committed manifest was rewritten by someone with write access."""
    import json

    import pyarrow as pa

    from latentds import LatentDataset
    from latentds.testing.synthetic import make_dataset

    src = tmp_path / "src"
    make_dataset(src, n_per_class=2, shape=(64, 48), seed=0, transfer_syntaxes=("explicit-le",))
    ds = LatentDataset(src, codec="bicubic-f4", cache=tmp_path / "cache")
    ds.fill(progress=False)
    ds.compact()
    store = ds.store
    m = store.refresh()
    real = Path(store.shard_path(m.shards[0]))
    if shard is not None:
        t = m.table
        t = t.set_column(t.schema.get_field_index("shard"), "shard", pa.array([shard] * t.num_rows))
        store.manifests.commit(t, dict(m.meta))
        # the bytes the crafted name points at, outside the cache: an escaping reader would get them
        outside = (real.parent / shard).resolve()
        if str(outside).startswith(str(tmp_path)):  # never plant outside the test's folder
            outside.parent.mkdir(parents=True, exist_ok=True)
            outside.write_bytes(real.read_bytes())
    if generation is not None:
        ptr = store.manifests.read_pointer()
        Path(store.manifests.pointer_path).write_text(json.dumps(dict(ptr, generation=generation)))
    return ds, src


@pytest.mark.parametrize("shard", ["../../../escaped.tar", "shard-../../x.tar", "/etc/passwd"])
def test_crafted_shard_name_is_refused_by_every_reader(tmp_path: Path, shard: str) -> None:
    from latentds import LatentDataset
    from latentds.cli import main
    from latentds.errors import ManifestError
    from latentds.store.export import export_webdataset
    from latentds.store import gc, verify

    ds, src = _crafted_cache(tmp_path, shard=shard)
    fresh = LatentDataset(src, codec="bicubic-f4", cache=tmp_path / "cache")
    with pytest.raises(ManifestError, match="is not a shard name"):
        fresh[0]
    with pytest.raises(ManifestError, match="is not a shard name"):
        export_webdataset(fresh.store, str(tmp_path / "export"))
    written = sorted(p for p in tmp_path.rglob("*") if p.is_file() and "export" in p.parts)
    assert written == []
    rep = verify(fresh.store)
    assert not rep.ok and any("is not a shard name" in why for _, why in rep.bad)
    before = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    with pytest.raises(ManifestError, match="is not a shard name"):
        gc(fresh.store, grace_s=0)
    with pytest.raises(ManifestError, match="is not a shard name"):
        fresh.store.compact()
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == before  # nothing deleted or written
    assert main(["verify", str(tmp_path / "cache")]) == 1


def test_crafted_generation_name_is_refused(tmp_path: Path) -> None:
    from latentds import LatentDataset
    from latentds.errors import ManifestError

    ds, src = _crafted_cache(tmp_path, generation="../../../../tmp/evil")
    fresh = LatentDataset(src, codec="bicubic-f4", cache=tmp_path / "cache")
    with pytest.raises(ManifestError, match="is not a generation name"):
        fresh[0]


def test_crafted_shard_name_in_a_bulk_record_is_a_problem_not_a_path(tmp_path: Path) -> None:
    import json

    from latentds.store.ops import verify

    ds, _ = _crafted_cache(tmp_path)
    rec = ds.store.location.join("bulk", "a" * 32 + ".json")
    Path(rec).parent.mkdir(parents=True, exist_ok=True)
    Path(rec).write_text(json.dumps({"partition": "a" * 32, "shard": "../../../../etc/passwd", "samples": 1}))
    rep = verify(ds.store)
    assert [why for p, why in rep.bad if p == rec] and "not a shard name" in rep.bad[0][1]


# -- item 8: non-regular tree entries are per-file failures, never hangs or aborts --------------

def _tree_with_bad_entries(tmp_path: Path) -> Path:
    from latentds.testing.synthetic import make_dataset

    src = tmp_path / "src"
    make_dataset(src, n_per_class=2, shape=(64, 48), seed=0, transfer_syntaxes=("explicit-le",))
    os.symlink(tmp_path / "gone.dcm", src / "negative" / "broken.dcm")  # dangling
    os.mkfifo(src / "positive" / "fifo.dcm")  # no writer: open() or read() blocks for ever
    return src


def _in_thread(fn: Any, timeout: float) -> Any:
    import threading

    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # reported to the test below
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"still running after {timeout} s (hangs on a FIFO?)"
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_fifo_and_broken_symlink_are_failures_in_fill(tmp_path: Path) -> None:
    from latentds import LatentDataset

    src = _tree_with_bad_entries(tmp_path)
    ds = LatentDataset(src, codec="bicubic-f4", cache=tmp_path / "cache")
    assert len(ds) == 6  # ImageFolder lists both, as torchvision does
    rep = _in_thread(lambda: ds.fill(progress=False), 120)
    assert rep.encoded == 4
    why = {Path(f.path).name: (f.error_type, f.message) for f in rep.failures}
    assert set(why) == {"broken.dcm", "fifo.dcm"}
    assert why["fifo.dcm"][0] == "ImageReadError" and "not a regular file (a FIFO)" in why["fifo.dcm"][1]


def test_fifo_and_broken_symlink_are_failures_in_bulk(tmp_path: Path) -> None:
    from dask.distributed import Client, LocalCluster

    from latentds.bulk import encode

    src = _tree_with_bad_entries(tmp_path)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cl, \
            Client(cl) as client:
        r = _in_thread(lambda: encode(src, "bicubic-f4", tmp_path / "cache", client=client, shard_samples=4,
                                      progress=False), 180)
    assert r.total == 6 and r.encoded == 4
    assert sorted(Path(f.path).name for f in r.failures) == ["broken.dcm", "fifo.dcm"]


# -- item 10: errors stay errors, are typed, and never print credentials ------------------------

def test_a_manifest_error_is_raised_on_every_access_not_only_the_first(tmp_path: Path) -> None:
    from latentds import LatentDataset
    from latentds.errors import ManifestError

    ds, src = _crafted_cache(tmp_path)
    ptr = ds.store.manifests.read_pointer()
    gen = Path(ds.store.manifests.generation_path(ptr["generation"]))
    gen.write_bytes(gen.read_bytes()[:100])  # the pointer is fine, the generation it names is not
    fresh = LatentDataset(src, codec="bicubic-f4", cache=tmp_path / "cache")
    calls = [0]
    orig = fresh.codec.encode_dist
    fresh.codec.encode_dist = lambda x: (calls.__setitem__(0, calls[0] + 1), orig(x))[1]  # type: ignore[method-assign]
    for _ in range(3):
        with pytest.raises(ManifestError, match="manifest checksum mismatch"):
            fresh[1]
    assert calls[0] == 0  # never a silent re-encode behind a broken manifest


@pytest.mark.parametrize("offset,length", [(-4096, 100), (0, 1 << 60)])
def test_impossible_offsets_are_a_shard_error_naming_the_object(tmp_path: Path, offset: int, length: int) -> None:
    import pyarrow as pa

    from latentds import LatentDataset
    from latentds.errors import ShardError
    from latentds.store.ops import verify

    ds, src = _crafted_cache(tmp_path)
    m = ds.store.refresh()
    t = m.table
    for col, v in (("offset", offset), ("length", length)):
        t = t.set_column(t.schema.get_field_index(col), col, pa.array([v] * t.num_rows, pa.int64()))
    ds.store.manifests.commit(t, dict(m.meta))
    fresh = LatentDataset(src, codec="bicubic-f4", cache=tmp_path / "cache")
    with pytest.raises(ShardError, match=r"shards/shard-[0-9a-f]{32}\.tar: manifest generation .* not a sample's range"):
        fresh[0]
    assert not verify(fresh.store).ok


def test_reprs_never_show_credentials() -> None:
    from latentds.bulk import Spec
    from latentds.store.fsio import Location

    opts = {"key": "AKIAEXAMPLE", "secret": "s3cr3t-value", "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"},
            "config_kwargs": {"aws_session_token": "tok-value"}}
    loc = Location("s3://bucket/cache", opts)
    spec = Spec("bicubic-f4", {}, "cpu", "s3://bucket/cache", opts, opts, "ns", True, None, None, "pad", 8, 4, None)
    for text in (repr(loc), repr(spec), str(spec), repr([loc])):
        assert "AKIAEXAMPLE" not in text and "s3cr3t-value" not in text and "tok-value" not in text
        assert "127.0.0.1:9" in text  # what is not a secret stays, for debugging
    assert loc.storage_options["secret"] == "s3cr3t-value"  # only the printout is redacted


@pytest.mark.parametrize("url", [
    "http://h/b/k?AWSAccessKeyId=AKIDQUERY&Signature=c2lnbmF0dXJl%2B&Expires=1",  # query signing (s3fs sign)
    "https://h/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDV4%2F20261128&X-Amz-Signature=abcdef"
    "&x-amz-security-token=TOKENVALUE",
])
def test_signed_urls_are_redacted_in_messages(url: str) -> None:
    from latentds.store.fsio import redact

    text = redact(f"GET {url} failed")
    for secret in ("AKIDQUERY", "c2lnbmF0dXJl", "AKIDV4", "abcdef", "TOKENVALUE"):
        assert secret not in text
    assert "//h/b/k?" in text and text.endswith(" failed")  # the object stays named


# -- item 9: a row whose bytes are another sample's is an error, not a wrong sample --------------

def _swap_rows(ds: Any) -> None:
    import pyarrow as pa

    m = ds.store.refresh()
    t = m.table
    cols = {n: t.column(n).to_pylist() for n in t.column_names}
    for c in ("offset", "length", "mean_length", "std_offset", "sha256", "crc32c", "meta_offset", "meta_length"):
        cols[c][0], cols[c][1] = cols[c][1], cols[c][0]  # consistent: every checksum still agrees
    ds.store.manifests.commit(pa.Table.from_pydict(cols, schema=t.schema), dict(m.meta))


@pytest.mark.parametrize("local_cache", [False, True])
def test_swapped_manifest_rows_are_refused_by_reads_verify_and_streaming(tmp_path: Path, local_cache: bool) -> None:
    from latentds import LatentDataset, LatentIterableDataset
    from latentds.errors import ShardError
    from latentds.store.ops import verify

    ds, src = _crafted_cache(tmp_path)
    _swap_rows(ds)
    kw = {"local_cache": str(tmp_path / "rt")} if local_cache else {}
    fresh = LatentDataset(src, codec="bicubic-f4", cache=tmp_path / "cache", **kw)
    m = fresh.store.refresh()
    swapped = {m.key_at(0), m.key_at(1)}
    bad = [i for i in range(len(fresh)) if fresh.key(i) in swapped]
    assert len(bad) == 2
    for i in range(len(fresh)):
        if i in bad:
            with pytest.raises(ShardError, match="rows are swapped or corrupt"):
                fresh[i]
        else:
            fresh[i]
    rep = verify(fresh.store)
    assert sum("rows are swapped" in why for _, why in rep.bad) == 2
    with pytest.raises(ShardError, match="rows are swapped or corrupt"):
        list(LatentIterableDataset.from_dataset(fresh))


# -- item 7 (part): stored failure reasons carry no spelling of the source path -----------------

def test_failure_records_never_hold_the_file_name_even_when_repr_escapes_it(tmp_path: Path) -> None:
    from latentds import LatentDataset
    from latentds.testing.synthetic import make_dataset

    src = tmp_path / "src"
    make_dataset(src, n_per_class=2, shape=(64, 48), seed=0, transfer_syntaxes=("explicit-le",))
    secret = "DOE\tJOHN 1234567"  # a patient name in a file name, with a tab: repr() escapes it
    os.symlink(tmp_path / "gone.dcm", src / "negative" / f"{secret}.dcm")
    (src / "positive" / f"{secret} b.dcm").write_bytes(b"\x00" * 10)  # unreadable as DICOM
    ds = LatentDataset(src, codec="bicubic-f4", cache=tmp_path / "cache")
    rep = ds.fill(progress=False)
    assert len(rep.failures) == 2
    blob = b"".join(p.read_bytes() for p in (tmp_path / "cache").rglob("*") if p.is_file())
    for needle in ("DOE", "JOHN", "1234567", str(src)):
        assert needle.encode() not in blob, needle
    assert any(f.error_type == "FileNotFoundError" for f in rep.failures)


# -- item 6 (part): a lost or garbage CURRENT.json is recovered by the command its error names ----

@pytest.mark.parametrize("pointer", [b"", b"\x00garbage{"])
def test_garbage_pointer_is_recovered_by_compact(tmp_path: Path, pointer: bytes) -> None:
    from latentds import LatentDataset
    from latentds.cli import main
    from latentds.errors import ManifestError

    ds, src = _crafted_cache(tmp_path)
    expected = [ds[i][0] for i in range(len(ds))]
    Path(ds.store.manifests.pointer_path).write_bytes(pointer)
    broken = LatentDataset(src, codec="bicubic-f4", cache=tmp_path / "cache")
    with pytest.raises(ManifestError, match="`latentds compact` re-points it"):
        broken[0]
    assert main(["compact", str(tmp_path / "cache")]) == 0  # the command the error names works
    fresh = LatentDataset(src, codec="bicubic-f4", cache=tmp_path / "cache")
    calls = [0]
    orig = fresh.codec.encode_dist
    fresh.codec.encode_dist = lambda x: (calls.__setitem__(0, calls[0] + 1), orig(x))[1]  # type: ignore[method-assign]
    for i in range(len(fresh)):
        assert fresh[i][0].equal(expected[i])
    assert calls[0] == 0 and fresh.store.reads == len(fresh)  # all from committed shards
    assert main(["verify", str(tmp_path / "cache")]) == 0


def test_swapped_rows_are_refused_on_s3_too(tmp_path: Path, backend: Any) -> None:
    """The remote read takes the tar header in the same ranged GET; same refusal as on disk."""
    from latentds import LatentDataset
    from latentds.errors import ShardError
    from latentds.testing.synthetic import make_dataset

    src = tmp_path / "src"
    make_dataset(src, n_per_class=2, shape=(64, 48), seed=0, transfer_syntaxes=("explicit-le",))
    kw = {"cache_storage_options": backend.options} if backend.options else {}
    ds = LatentDataset(src, codec="bicubic-f4", cache=backend.url, **kw)
    expected = [ds[i][0] for i in range(len(ds))]
    ds.compact()
    fresh = LatentDataset(src, codec="bicubic-f4", cache=backend.url, **kw)
    assert all(fresh[i][0].equal(expected[i]) for i in range(len(fresh)))
    assert fresh.store.reads == len(fresh)
    _swap_rows(fresh)
    fresh.refresh()
    m = fresh.store.refresh()
    swapped = {m.key_at(0), m.key_at(1)}
    i = next(i for i in range(len(fresh)) if fresh.key(i) in swapped)
    with pytest.raises(ShardError, match="rows are swapped or corrupt"):
        fresh[i]
