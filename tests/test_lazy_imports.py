"""What a process imports (issue 15 item 1, spawned workers): a spawned DataLoader worker imports
whatever its pickle names before it reads a sample, on every epoch of every worker. These run a
fresh interpreter and assert that the heavy modules the path does not need stay out of
``sys.modules``: a test that fails when someone adds an eager import to a module on the path.

``benchmarks/spawn_timeline.py`` measured the path (2026-11-28, sixth pass): torch itself
(~3 s CPU to import, ~1 s to finalize at exit) is most of a spawned worker's cost, ours on top
~0.2 s; each module below would add its own import to every worker."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

#: never needed to iterate a LatentIterableDataset in a worker (S3 through signed URLs included):
#: the encoder stack, image/DICOM readers, Dask, other S3 clients, the codec registry, the
#: map-style dataset and the bulk encoder
NOT_IN_A_WORKER = ("s3fs", "aiohttp", "botocore", "boto3", "torchvision", "diffusers", "pydicom", "PIL", "dask",
                   "distributed", "pandas", "scipy", "litdata", "latentds.codecs", "latentds.dataset",
                   "latentds.bulk", "latentds.preprocess", "latentds.serve")

_WORKER = r"""
import json, pickle, sys
import torch.utils.data._utils.worker  # what a DataLoader worker's own pickle imports
with open(sys.argv[1], "rb") as f:
    ds = pickle.load(f)
n = sum(1 for _ in ds)
print(json.dumps({"n": n, "modules": sorted(sys.modules)}))
"""


def _fresh(code: str, *args: str) -> dict:
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def _loaded(modules: list[str], names: tuple[str, ...]) -> list[str]:
    return [n for n in names if any(m == n or m.startswith(n + ".") for m in modules)]


def test_import_latentds_is_light() -> None:
    """``import latentds`` (a CLI start, a spawned worker's first import of the package) pulls no
    torch, numpy or pyarrow: the public names are resolved on first use (PEP 562)."""
    got = _fresh("import json, sys, latentds; print(json.dumps({'modules': sorted(sys.modules)}))")
    assert _loaded(got["modules"], ("torch", "numpy", "pyarrow", "fsspec") + NOT_IN_A_WORKER) == []


def test_dir_lists_the_api_not_the_helpers() -> None:
    """``dir(latentds)`` (tab completion, ``help``) shows every public name, lazy ones included,
    and not the typing/importlib helpers ``__init__`` itself uses."""
    import latentds

    names = dir(latentds)
    assert set(latentds.__all__) <= set(names)
    assert not {"Any", "TYPE_CHECKING", "annotations", "importlib"} & set(names)


def test_unknown_name_is_an_attribute_error() -> None:
    import latentds

    with pytest.raises(AttributeError, match="has no attribute 'NoSuchThing'"):
        latentds.NoSuchThing  # noqa: B018


def _spawn_pickle(obj: object) -> bytes:
    """The pickle multiprocessing writes for a process it spawns (``get_spawning_popen()`` set)."""
    from multiprocessing import context

    context.set_spawning_popen(object())
    try:
        return pickle.dumps(obj)
    finally:
        context.set_spawning_popen(None)


def test_a_spawned_worker_imports_only_what_streaming_needs(s3_env, tmp_path: Path) -> None:
    """The pickle a spawned worker of ``LatentIterableDataset`` on S3 gets (the plan and signed
    shard URLs), loaded and iterated in a fresh interpreter as the worker does: every sample
    read, none of ``NOT_IN_A_WORKER`` imported (no S3 client built: the URLs need none)."""
    from latentds import LatentIterableDataset
    from latentds.store import ShardedStore
    from latentds.store.entries import LatentCache

    url, options = f"s3://{s3_env.new_bucket()}/latents", s3_env.options()
    store = ShardedStore(LatentCache(url, "ns", storage_options=options))
    rng = np.random.default_rng(0)
    for i in range(12):
        k = f"{i:040x}"
        store.cache.put(k, rng.standard_normal((2, 3, 3)).astype(np.float32), None, {"key": k, "target": i})
    store.compact(shard_samples=3)
    it = LatentIterableDataset(url, "ns", storage_options=options, shuffle=True,
                               samples={f"{i:040x}": i for i in range(12)})
    path = tmp_path / "worker.pkl"
    path.write_bytes(_spawn_pickle(it))
    got = _fresh(_WORKER, str(path))
    assert got["n"] == 12 and it._signed is not None
    assert _loaded(got["modules"], NOT_IN_A_WORKER) == []
