"""The store contract (latentds.testing.store_conformance) on every store the project supports:
local disk, memory:// and S3 (moto on 127.0.0.1 via the loopback fixture)."""

from __future__ import annotations

import uuid
from typing import Any, Callable

import pytest

from latentds.store.backend import Backend
from latentds.testing.store_conformance import CHECKS


@pytest.fixture(params=["local", "memory", "s3"])
def fresh_backend(request: pytest.FixtureRequest, tmp_path: Any) -> Backend:
    if request.param == "local":
        return Backend(str(tmp_path / "root"))
    if request.param == "memory":
        b = Backend(f"memory://lds-conf-{uuid.uuid4().hex[:12]}")
        request.addfinalizer(lambda: b.fs.rm(b.path(), recursive=True) if b.fs.exists(b.path()) else None)
        return b
    env = request.getfixturevalue("s3_env")
    env.proxy.fail_next(0)
    env.proxy.fail_every(0)
    return Backend(f"s3://{env.new_bucket()}/root", env.options())


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
def test_store_conformance(check: Callable[[Backend], None], fresh_backend: Backend) -> None:
    check(fresh_backend)


def test_capabilities_follow_the_protocol(tmp_path: Any, s3_env: Any) -> None:
    assert Backend(str(tmp_path)).caps.local and Backend(str(tmp_path)).caps.conditional
    mem = Backend("memory://lds-caps").caps
    assert not mem.local and not mem.conditional and mem.protocol == "memory"
    s3 = Backend("s3://bucket/x", s3_env.options()).caps
    assert not s3.local and s3.conditional and s3.protocol in ("s3", "s3a")
