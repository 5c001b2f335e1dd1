"""A cache written by the release before the issue-14 redesign (commit 3efc899) is read by
today's code unchanged: same namespace, zero encodes, the same latents (issue 14 acceptance).

The fixture (tests/fixtures/legacy_cache_3efc899/) was written by that release with
``make_fixture.py``: six PNGs in an ImageFolder tree, bicubic-f4, four samples compacted into
a shard and committed, two left as staging objects. A sample key includes the source root's
resolved path and each file's size and mtime (docs/design.md invariant 2), so the test puts
the tree back at the path it was written from and restores the recorded mtimes; a git
checkout alone would (correctly) look like changed files.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from latentds import LatentDataset

FIXTURE = Path(__file__).parent / "fixtures" / "legacy_cache_3efc899"
BASE = Path("/tmp/latentds-legacy-fixture")  # where 3efc899 wrote it: the root path is in the key


@pytest.fixture()
def legacy() -> dict:
    shutil.rmtree(BASE, ignore_errors=True)
    shutil.copytree(FIXTURE, BASE, ignore=shutil.ignore_patterns("make_fixture.py"))
    expected = json.loads((BASE / "expected.json").read_text())
    for rel, ns in expected["mtime_ns"].items():
        os.utime(BASE / "tree" / rel, ns=(ns, ns))
    yield expected
    shutil.rmtree(BASE, ignore_errors=True)


def test_previous_release_cache_reads_with_zero_encodes(legacy: dict) -> None:
    ds = LatentDataset(str(BASE / "tree"), codec=legacy["codec"], cache=str(BASE / "cache"))
    assert ds.namespace == legacy["namespace"]
    assert ds.classes == ["benign", "malignant"]
    report = ds.fill(progress=False)
    assert (report.encoded, report.cached) == (0, 6), report
    for i, (path, target) in enumerate(ds.samples):
        rel = Path(path).relative_to(BASE / "tree").as_posix()
        z, t = ds[i]
        assert t == target
        np.testing.assert_array_equal(z.numpy(), np.asarray(legacy["latents"][rel], dtype=np.float32))
    # Compacting the two staged samples keeps every latent and still encodes nothing.
    ds.compact()
    again = LatentDataset(str(BASE / "tree"), codec=legacy["codec"], cache=str(BASE / "cache"))
    assert again.fill(progress=False).encoded == 0
    for i, (path, _) in enumerate(again.samples):
        rel = Path(path).relative_to(BASE / "tree").as_posix()
        np.testing.assert_array_equal(again[i][0].numpy(), np.asarray(legacy["latents"][rel], dtype=np.float32))


def test_a_changed_file_is_re_encoded_not_served_stale(legacy: dict) -> None:
    p = BASE / "tree" / "benign" / "img0.png"
    os.utime(p, ns=(legacy["mtime_ns"]["benign/img0.png"] + 1,) * 2)
    ds = LatentDataset(str(BASE / "tree"), codec=legacy["codec"], cache=str(BASE / "cache"))
    assert ds.fill(progress=False).encoded == 1
