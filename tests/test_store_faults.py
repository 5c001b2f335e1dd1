"""Real S3 faults, injected by a loopback proxy in front of moto's server (no mock of s3fs):
transient 503s are retried and lose nothing; 403 and a missing bucket fail fast, saying what to
fix, without printing credentials."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from latentds import LatentDataset
from latentds.testing import synthetic
from latentds.cli import main as cli_main
from latentds.errors import StoreAccessError
from latentds.store.ops import verify
from latentds.store.fsio import RETRY_STATS

from conftest import S3Env


@pytest.fixture(scope="module")
def pngs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("src") / "dcm"
    synthetic.make_dataset(root, n_per_class=3, shape=(64, 48), seed=11)
    return root


def _ds(root: Path, url: str, opts: dict) -> LatentDataset:
    return LatentDataset(root, codec="bicubic-f4", cache=url, cache_storage_options=opts)


def test_transient_errors_are_retried_counted_and_lose_nothing(pngs: Path, tmp_path: Path, s3_env: S3Env) -> None:
    ref = LatentDataset(pngs, codec="bicubic-f4", cache=tmp_path / "ref")
    expected = [ref[i][0] for i in range(len(ref))]
    # botocore's own retries off, so the failures reach s3fs's retry loop (5 attempts) and,
    # past it, latentds' (capped backoff, counted). Both layers are real code under real 503s.
    opts = s3_env.options(config_kwargs={"retries": {"max_attempts": 1}})
    url = f"s3://{s3_env.new_bucket()}/c"
    ds = _ds(pngs, url, opts)
    before = dict(RETRY_STATS)
    s3_env.proxy.reset_counts()
    s3_env.proxy.fail_every(3)  # every third request to the server answers 503 SlowDown
    try:
        for i in range(len(ds)):  # lazy fill: GET misses, PUTs
            assert torch.equal(ds[i][0], expected[i])
        ds.compact()
        fresh = _ds(pngs, url, opts)
        for i in range(len(fresh)):  # ranged reads from the shard
            assert torch.equal(fresh[i][0], expected[i])
        s3_env.proxy.fail_every(0)
        s3_env.proxy.fail_next(7, methods={"GET"})  # more than s3fs' 5 attempts in a row
        again = _ds(pngs, url, opts)
        assert torch.equal(again[0][0], expected[0])
    finally:
        s3_env.proxy.fail_every(0)
        s3_env.proxy.fail_next(0)
    assert s3_env.proxy.injected[503] >= 10
    assert RETRY_STATS["retries"] > before["retries"]  # latentds' own layer retried, and counted it
    assert verify(_ds(pngs, url, opts).store).ok
    assert len(fresh.store.manifest()) == len(ds)


def test_default_client_settings_absorb_503s_too(pngs: Path, s3_env: S3Env) -> None:
    url = f"s3://{s3_env.new_bucket()}/c"
    ds = _ds(pngs, url, s3_env.options())
    s3_env.proxy.fail_next(2)
    try:
        z = [ds[i][0] for i in range(len(ds))]
    finally:
        s3_env.proxy.fail_next(0)
    assert len(ds.cache.keys()) == len(ds) and all(t.numel() for t in z)


def test_access_denied_fails_fast_with_a_fix_and_no_secret(pngs: Path, s3_env: S3Env,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    opts = s3_env.options(config_kwargs={"retries": {"max_attempts": 1}})
    url = f"s3://{s3_env.new_bucket()}/c"
    ds = _ds(pngs, url, opts)
    s3_env.proxy.fail_next(10_000, status=403)
    try:
        before = RETRY_STATS["retries"]
        with pytest.raises(StoreAccessError) as info:
            ds[0]
        assert RETRY_STATS["retries"] == before  # not retried
        msg = str(info.value)
        assert "access denied" in msg and "credentials" in msg and "/c/" in msg
        assert opts["secret"] not in msg and opts["key"] not in msg
        import json

        assert cli_main(["verify", url, "--storage-options", json.dumps(opts)]) == 2
        out = capsys.readouterr()
        assert "access denied" in out.err and opts["secret"] not in out.out + out.err
    finally:
        s3_env.proxy.fail_next(0)


def test_missing_bucket_fails_fast_naming_it(pngs: Path, s3_env: S3Env) -> None:
    opts = s3_env.options()
    ds = _ds(pngs, "s3://lds-no-such-bucket-here/c", opts)
    with pytest.raises(StoreAccessError, match="lds-no-such-bucket-here.*does not exist"):
        ds[0]
