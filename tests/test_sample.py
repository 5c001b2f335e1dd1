"""latentds.sample: the one per-sample path shared by LatentDataset, fill() and the Dask task."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from latentds.bulk import Spec, preprocessing_spec
from latentds.codecs import create_codec
from latentds.errors import ConfigError
from latentds.identity import Identities, IdentityKey, content_matches
from latentds.preprocess import Preprocess
from latentds.sample.encode import ShapeBatches, adopted_entry, make_entry
from latentds.sample.image import Pipeline
from latentds.sample.source import identity, legacy_key, relative_path, stored_identity
from latentds.store.entries import decode_entry, encode_entry, sample_key

KEY = IdentityKey(b"0123456789abcdef0123456789abcdef")


def test_one_namespace_spec_for_the_dataset_and_the_bulk_job():
    pipe = Pipeline(Preprocess(crop_roi=False, size=64), (32, 24), "resize")
    assert pipe.spec() == preprocessing_spec(False, 64, (32, 24), "resize")
    spec = Spec("bicubic-f4", {}, "cpu", "c", {}, {}, "ns", False, 64, (32, 24), "resize", 8, 4, None)
    assert spec.pipeline == pipe  # the task rebuilds exactly the dataset's pipeline
    assert Pipeline().spec()["fit"] is None  # no image_size: fit does not enter the namespace

    def my_loader(path: str) -> np.ndarray:
        return np.zeros((4, 4))

    assert Pipeline(loader=my_loader).spec()["loader"].endswith("my_loader")
    with pytest.raises(ConfigError, match="fit must be"):
        Pipeline(fit="crop")  # type: ignore[arg-type]


def test_shape_batches_group_by_shape_and_drop_a_zero_std():
    codec = create_codec("bicubic-f4")  # deterministic: no posterior spread
    b: ShapeBatches[str] = ShapeBatches(codec, batch_size=2)
    assert b.add(np.zeros((8, 8), np.float32), "a") == []
    assert b.add(np.zeros((12, 8), np.float32), "b") == []  # another shape: another batch
    done = b.add(np.ones((8, 8), np.float32), "c")  # "a"'s batch is full now
    assert [p for p, _, _ in done] == ["a", "c"] and all(s is None for _, _, s in done)
    assert done[1][1].dtype == np.float32 and done[1][1].shape == (1, 2, 2)
    rest = list(b.drain())
    assert [p for p, _, _ in rest] == ["b"] and b.encode_seconds > 0
    x = torch.from_numpy(np.ones((1, 1, 8, 8), np.float32))
    assert np.array_equal(done[1][1], codec.encode_dist(x)[0][0].numpy())  # what the codec gives


def test_entry_metadata_is_what_the_staging_object_stores():
    mean = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    e = make_entry("k" * 40, 3, mean, None, {"content_shape": [5, 4]})
    stored = decode_entry(encode_entry(e.mean, e.std, e.meta), "x")
    assert stored.meta == e.meta  # the shard member and the staging object carry the same metadata
    again = adopted_entry("n" * 40, 1, mean, None, dict(e.meta, shard="s.tar"))
    assert again.meta == dict(e.meta, key="n" * 40, target=1)


def test_identity_and_keys(tmp_path: Path):
    f = tmp_path / "cls" / "a.dcm"
    f.parent.mkdir()
    f.write_bytes(b"x" * 10)
    rel = relative_path(str(f), str(tmp_path))
    assert rel == "cls/a.dcm"
    ident = identity(str(f), rel, "ROOT")
    st = os.stat(f)
    assert ident == {"mtime_ns": st.st_mtime_ns, "path": rel, "root": "ROOT", "size": 10}
    assert legacy_key(ident) == sample_key({k: v for k, v in ident.items() if k != "root"})
    with pytest.raises(FileNotFoundError):
        identity(str(tmp_path / "gone.dcm"), "gone.dcm", "ROOT")
    assert identity(str(tmp_path / "gone.dcm"), "gone.dcm", "ROOT", missing_ok=True)["size"] == -1


def test_entries_store_no_bare_hash_of_a_path_or_of_the_bytes():
    digest = hashlib.sha256(b"pixels").hexdigest()
    plain = stored_identity(Identities(None), "ROOT", "benign/Doe Jane.dcm", digest)
    assert plain == {"content_sha256": ""}  # without a key: nothing a reader could test guesses against
    keyed = stored_identity(Identities(KEY), "ROOT", "benign/Doe Jane.dcm", digest)
    assert digest not in keyed["content_sha256"] and content_matches(keyed["content_sha256"], digest, KEY)
    assert len(keyed["path_id"]) == 32
    assert hashlib.sha256(b"benign/Doe Jane.dcm").hexdigest()[:16] not in str(keyed)
