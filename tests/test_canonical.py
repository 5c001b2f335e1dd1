"""canonical_json has one implementation (latentds/canonical.py), and the identities hashed from it
are the ones the release before it computed (values pinned below were printed by commit 85a4ba5,
before the two copies were merged): a cache written then is still found, with zero re-encodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import latentds
from latentds.canonical import canonical_json


def test_one_implementation() -> None:
    import latentds.codecs.base as base
    import latentds.store.entries as entries

    assert base.canonical_json is canonical_json
    assert entries.canonical_json is canonical_json


def test_spelling() -> None:
    assert canonical_json({"b": (1, 2), "a": None}) == '{"a":null,"b":[1,2]}'
    assert canonical_json({"s": frozenset({"b", "a", "c"})}) == '{"s":["a","b","c"]}'  # not iteration order
    assert canonical_json(torch.float16) == '"torch.float16"'
    assert canonical_json(torch.float16, strict=True) == '"torch.float16"'
    # the store's rule: what json cannot write is its str (numpy scalars become strings, as ever)
    assert canonical_json({"p": Path("/x/y"), "n": np.int64(5)}) == '{"n":"5","p":"/x/y"}'
    # a fingerprint refuses what has no stable text
    with pytest.raises(TypeError, match="codec fingerprint"):
        canonical_json({"f": object()}, strict=True)


def test_identities_pinned_to_the_previous_release() -> None:
    from latentds.codecs.base import compute_fingerprint
    from latentds.store.entries import namespace_id, sample_key

    pre = {"crop_roi": True, "size": None, "image_size": (512, 416), "fit": "pad", "window": [0.0, 1.0],
           "dtype": torch.float16}
    assert namespace_id("ab" * 32, pre) == "4fcc46a58ce879e601d5ac9ddc793e26"
    ident = {"source": "/data/cmmd", "rel": "benign/1.dcm", "size": 1234, "mtime_ns": 1700000000000000000,
             "path": Path("/x/y"), "n": np.int64(5), "f": np.float32(0.5)}
    assert sample_key(ident) == "f4e6023a4c767885f86281331eaeb22f1f460fd1"
    fp = compute_fingerprint(name="kl-f8c4", arch={"f": 8, "C": 4, "blocks": (1, 2), "dtype": torch.float32},
                             weights_sha256="cd" * 32, preprocessing={"range": (0.0, 1.0)})
    assert fp == "f0618cf9650ae2c0cb536f17ebe70de00f8fda0880f72fd984b8229e3fc7d10b"


@pytest.mark.parametrize("kwargs, namespace, fingerprint", [
    ({"codec": "bicubic-f8", "image_size": (64, 48)}, "06167d8f97dc4f6b0abd03f3c941a350",
     "67aca78833c3ca77e48e0e4887d2c40ba93be30f11674706fdcf9744c2a0d7c9"),
    ({"codec": "s2d-f4c16"}, "c9685d3ce81b3de1ef24315372cf6115",
     "d628311439666b6cb57f49c768fbe8ebfc07c386a6bbb13745d988f773548d3a"),
    ({"codec": "bicubic-f4", "size": 256, "crop_roi": False}, "9a5f4804398c800347aca17f70909c08",
     "310bd02292feba91011991fce1e25aab5075494add490eedc2489823e54940de"),
])
def test_dataset_namespace_pinned(tmp_path: Path, kwargs: dict, namespace: str, fingerprint: str) -> None:
    root = tmp_path / "src"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        Image.fromarray(np.zeros((64, 48), np.uint8)).save(root / cls / "0.png")
    ds = latentds.LatentDataset(root, cache=tmp_path / "cache", **kwargs)
    assert ds.codec.fingerprint == fingerprint
    assert ds.namespace == namespace
