"""Presigned shard GETs: a spawned reader's shards without an S3 client of its own.

A spawned DataLoader worker that reads a shard through the backend first imports s3fs,
aiobotocore and aiohttp and builds a botocore client (0.5 s of imports and ~0.3 s of client
set-up on the loopback server at load 2, profiled; more under load) before its first byte. The
main process already has a client: it signs a GET URL per shard of the epoch (S3 query-string
auth, ``fs.sign``) and ships them with the epoch plan, and the worker fetches each range with
the standard library's ``urllib`` (no client, no event loop; the socket read releases the GIL).

It is only a fast path: a URL that is missing, expired, refused (403/404/5xx), cut short, or
unreachable (a CA bundle or proxy the standard library does not share with boto) makes the
caller read through the backend exactly as before - same retries, same typed errors naming the
object - and the first failure turns the fast path off for the process. The bytes read either
way go through the same checks (tar member names, CRC32C). A signed URL is a bearer token for
one object until it expires; it travels only where the storage options (the credentials
themselves) already travel, and is never put in an error message or log.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["MAX_SIGNED", "SIGN_EXPIRES_S", "SignedRanges"]

#: lifetime of a signed URL; past it (a long epoch) reads go through the backend
SIGN_EXPIRES_S = 6 * 3600
#: more shards than this in one epoch: not signed (signing costs the main process ~0.3 ms each)
MAX_SIGNED = 4096
#: seconds to wait on a signed GET before the backend takes over (s3fs's read timeout is 15 s)
TIMEOUT_S = 15.0


class SignedRanges:
    """Signed GET URLs of some objects, and ranged reads through them (``None``: use the backend)."""

    def __init__(self, urls: dict[str, str], valid_until: float) -> None:
        self._urls = dict(urls)
        self._valid_until = valid_until
        self._off = False  # set on the first failure: the backend path from then on

    @classmethod
    def sign(cls, backend: Any, rels: list[str]) -> "SignedRanges | None":
        """Sign ``rels`` (paths relative to the store) when the backend is S3 and can sign;
        ``None`` otherwise (any other store, too many objects, or signing failed)."""
        if backend.caps.protocol not in ("s3", "s3a") or len(rels) > MAX_SIGNED:
            return None
        until = time.time() + SIGN_EXPIRES_S - 60  # a minute's margin for clock skew
        try:
            fs = backend.fs
            return cls({rel: fs.sign(backend.path(rel), expiration=SIGN_EXPIRES_S) for rel in rels}, until)
        except Exception:  # noqa: BLE001 - signing is optional: any failure means "read as before"
            return None

    def get_range(self, rel: str, start: int, end: int) -> bytes | None:
        """Bytes ``start..end`` of ``rel`` (short at the object's end), or ``None``."""
        url = self._urls.get(rel)
        if url is None or self._off or time.time() > self._valid_until:
            return None
        import http.client
        import urllib.error
        import urllib.request

        req = urllib.request.Request(url, headers={"Range": f"bytes={start}-{max(start, end - 1)}"})
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
                status = resp.status
                data = resp.read()  # raises IncompleteRead when the body is cut short
        except (OSError, ValueError, http.client.HTTPException):  # URLError/HTTPError are OSErrors
            self._off = True
            return None
        if status == 200:  # a server that ignored the Range header: the whole object
            return data[start:end]
        if status != 206:
            self._off = True
            return None
        return data
