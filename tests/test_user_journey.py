"""A user's mistakes through the Python API, as a user swapping ImageFolder for LatentDataset
makes them (H3 audit): each is a typed LatentdsError naming the thing at fault and the fix, not a
bare ValueError / NotADirectoryError from fsspec or the OS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latentds import LatentDataset
from latentds.errors import CacheError, ConfigError


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "tree" / c).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (40, 56), dtype=np.uint8)).save(tmp_path / "tree" / c / "0.png")
    return tmp_path / "tree"


@pytest.mark.parametrize("where", ["cache", "root"])
def test_a_typo_in_a_url_protocol_names_it(tree: Path, tmp_path: Path, where: str) -> None:
    """Was ``ValueError: Protocol not known: s4`` (no URL, no hint); still a ValueError for callers."""
    kw = {"root": tree, "cache": tmp_path / "cache"}
    kw[where] = "s4://bucket/prefix"
    with pytest.raises(ConfigError, match=r"s4://bucket/prefix.*unknown storage protocol 's4'.*s3://") as info:
        LatentDataset(kw.pop("root"), codec="bicubic-f8", **kw)[0]
    assert isinstance(info.value, ValueError)


def test_a_cache_that_is_a_file_names_it(tree: Path, tmp_path: Path) -> None:
    """Was ``NotADirectoryError: .../CURRENT.json`` on the first access."""
    f = tmp_path / "notes.txt"
    f.write_text("not a cache")
    with pytest.raises(CacheError, match=r"notes.txt.*is a file, not a folder"):
        LatentDataset(tree, codec="bicubic-f8", cache=f)[0]
