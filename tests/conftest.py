"""Shared fixtures: a real S3 server (moto's server mode) on 127.0.0.1, behind a fault-injecting
loopback proxy, started once per session; a fresh bucket per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from latentds.testing.loopback_s3 import FaultProxy, MotoS3, storage_options


@dataclass
class S3Env:
    moto: MotoS3
    proxy: FaultProxy

    def options(self, **extra: Any) -> dict[str, Any]:
        return storage_options(self.proxy.endpoint, **extra)

    def new_bucket(self) -> str:
        import s3fs

        name = f"lds-{uuid.uuid4().hex[:12]}"
        fs = s3fs.S3FileSystem(**storage_options(self.moto.endpoint), skip_instance_cache=True)
        fs.call_s3("create_bucket", Bucket=name)  # us-east-1: no LocationConstraint
        return name


@pytest.fixture(scope="session")
def s3_env() -> Iterator[S3Env]:
    # Keep real credentials or endpoints from the environment out of these tests.
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("AWS_")}
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    moto = MotoS3().start()
    proxy = FaultProxy(moto.port).start()
    try:
        yield S3Env(moto, proxy)
    finally:
        proxy.stop()
        moto.stop()
        os.environ.pop("AWS_EC2_METADATA_DISABLED", None)
        os.environ.update(saved)


@dataclass
class Backend:
    """Where a test's cache lives: a local directory or a fresh S3 bucket."""

    kind: str
    url: str
    options: dict[str, Any] = field(default_factory=dict)
    env: S3Env | None = None


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Any) -> Backend:
    if request.param == "local":
        return Backend("local", str(tmp_path / "cache"))
    env: S3Env = request.getfixturevalue("s3_env")
    env.proxy.fail_next(0)
    env.proxy.fail_every(0)
    return Backend("s3", f"s3://{env.new_bucket()}/latents", env.options(), env)
