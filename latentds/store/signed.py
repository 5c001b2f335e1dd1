"""Presigned shard GETs: a spawned reader's shards without an S3 client of its own.

A spawned DataLoader worker that reads a shard through the backend first imports s3fs,
aiobotocore and aiohttp and builds a botocore client (0.5 s of imports and ~0.3 s of client
set-up on the loopback server at load 2, profiled; more under load) before its first byte. The
main process already has a client: it signs a GET URL per shard of the epoch (S3 query-string
auth, ``fs.sign``) and ships them with the epoch plan, and the worker fetches each range with
the standard library's ``http.client`` over a kept-alive connection (no client, no event loop),
the body in one GIL-free ``recv`` (see ``_read_body``). Forked workers read the same way: one 8
MiB shard GET in a forked child took s3fs 33 ms and this path 16-22 ms alone, and 130 ms
against 50 ms (obstore, LitData's Rust client: 44 ms) while a thread standing for the decode
loop held the GIL (``benchmarks/shard_get.py``, loopback, load 1.8-3.1).

It is only a fast path: a URL that is missing, expired, refused (403/404/5xx), cut short, or
unreachable (a CA bundle or proxy the standard library does not share with boto) makes the
caller read through the backend exactly as before - same retries, same typed errors naming the
object - and the first failure turns the fast path off for the process. The bytes read either
way go through the same checks (tar member names, CRC32C). A signed URL is a bearer token for
one object until it expires; it travels only where the storage options (the credentials
themselves) already travel, and is never put in an error message or log.
"""

from __future__ import annotations

import http.client
import os
import socket
import struct
import sys
import threading
import time
import urllib.parse
import urllib.request
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
        self._local = threading.local()  # per thread: a kept-alive connection

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

    def expired(self) -> bool:
        """Past the URLs' lifetime (less the margin): a long-lived reader signs again."""
        return time.time() > self._valid_until

    def get_range(self, rel: str, start: int, end: int) -> bytes | bytearray | None:
        """Bytes ``start..end`` of ``rel`` (short at the object's end), or ``None``."""
        url = self._urls.get(rel)
        if url is None or self._off or time.time() > self._valid_until:
            return None
        rng = f"bytes={start}-{max(start, end - 1)}"
        try:
            status, data, framed, crange = self._get(url, rng)
        except (OSError, ValueError, http.client.HTTPException):  # URLError/HTTPError are OSErrors
            self._drop_conn()
            self._off = True
            return None
        # only an answer that proves it is whole and is the range asked for is used: anything
        # else is a lost fast path (the backend reads it), never a false "shard corrupt" error
        if not framed:  # no Content-Length and not chunked: a cut body cannot be told from a whole one
            self._off = True
            return None
        if status == 200:  # a server that ignored the Range header: the whole object
            return data[start:end]
        if status != 206 or not _range_is(crange, start, len(data)):
            self._off = True
            return None
        return data

    def _get(self, url: str, rng: str) -> tuple[int, bytes | bytearray, bool, str | None]:
        """``(status, body, framed, Content-Range)``; ``framed``: the body's end was declared
        (Content-Length or chunked), so ``read`` raised ``IncompleteRead`` if it was cut short."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or _proxied(parts):
            # a proxy from the environment: urllib honours it (as boto does), http.client does not
            req = urllib.request.Request(url, headers={"Range": rng})
            with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
                framed = bool(resp.chunked) or resp.length is not None
                # raises IncompleteRead when a framed body is cut short
                return resp.status, resp.read(), framed, resp.headers.get("Content-Range")
        conn = self._conn(parts)
        target = parts.path + ("?" + parts.query if parts.query else "")
        try:
            conn.request("GET", target, headers={"Range": rng})
            resp = conn.getresponse()
            framed = bool(resp.chunked) or resp.length is not None
            if resp.status in (200, 206) and not resp.chunked and resp.length is not None:
                data = _read_body(conn, resp)
            else:
                data = resp.read()
        except BaseException:
            self._drop_conn()  # a half-read response leaves the connection unusable
            raise
        if resp.will_close:
            self._drop_conn()
        return resp.status, data, framed, resp.getheader("Content-Range")

    def _conn(self, parts: urllib.parse.SplitResult) -> http.client.HTTPConnection:
        """This thread's kept-alive connection to ``parts``' host (a new one after a fork: the
        parent's socket is the parent's). Keep-alive saves a TCP connect per shard GET."""
        local = self._local
        key = (os.getpid(), parts.scheme, parts.netloc)
        conn = getattr(local, "conn", None)
        if conn is None or getattr(local, "key", None) != key:
            cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
            conn = local.conn = cls(parts.hostname or "", parts.port, timeout=TIMEOUT_S)
            local.key = key
        return conn

    def _drop_conn(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None and getattr(self._local, "key", (None,))[0] == os.getpid():
            conn.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_local"]  # connections stay in the process (and thread) that opened them
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()


def _range_is(crange: str | None, start: int, n: int) -> bool:
    """Whether ``Content-Range: bytes a-b/total`` says the body is bytes ``start..start+n``."""
    try:
        unit, _, rest = (crange or "").strip().partition(" ")
        a, _, b = rest.split("/")[0].partition("-")
        return unit.lower() == "bytes" and int(a) == start and int(b) - int(a) + 1 == n
    except ValueError:
        return False


def _proxied(parts: urllib.parse.SplitResult) -> bool:
    proxies = urllib.request.getproxies()
    return parts.scheme in proxies and not urllib.request.proxy_bypass(parts.hostname or "")


def _read_body(conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> bytes | bytearray:
    """The response's ``Content-Length`` bytes, taking the GIL once instead of once per socket read.

    ``resp.read()`` reads a body with one ``recv`` per chunk the kernel has ready (tens to
    hundreds per 8 MiB shard); each needs the GIL back, and in a DataLoader worker the decode
    thread holds it in 5 ms slices, so the download crawls while the reader decodes (an 8 MiB
    GET: 68 ms against 16 ms alone; 50 ms this way; ``benchmarks/shard_get.py --decode``). On a plain
    TCP socket the rest of the body after what ``http.client`` buffered is read with
    ``MSG_WAITALL``: one blocking ``recv`` that the kernel fills. TLS sockets (and platforms
    without it) read as before."""
    length = int(resp.length or 0)
    if (not _WAITALL or isinstance(conn, http.client.HTTPSConnection) or resp.fp is None
            or length < (1 << 20)):
        return resp.read()
    buf = bytearray(length)
    view = memoryview(buf)
    got = resp.fp.readinto(view[:min(length, len(resp.fp.peek(1)))])  # what http.client already buffered
    # the connection's socket; a "Connection: close" answer has handed it to the response, whose
    # file we read through a duplicate of its descriptor (closed below; the socket stays)
    sock = conn.sock if conn.sock is not None else socket.socket(fileno=os.dup(resp.fp.fileno()))
    timeout = sock.gettimeout()
    sock.settimeout(None)  # a timeout makes Python poll and read per chunk; the kernel times it instead
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _RCVTIMEO)
    try:
        while got < length:
            n = sock.recv_into(view[got:], length - got, socket.MSG_WAITALL)
            if n == 0:
                raise http.client.IncompleteRead(bytes(view[:got]), length - got)
            got += n
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _NO_RCVTIMEO)
        sock.settimeout(timeout if sock is conn.sock else TIMEOUT_S)  # blocking mode is the shared descriptor's
        if sock is not conn.sock:
            sock.close()
    resp.length = 0  # the body is consumed: read() now closes the response for the next request
    resp.read()
    return buf  # not bytes(buf): an 8 MiB copy; readers take any bytes-like object


#: Linux and macOS block in one ``recv(MSG_WAITALL)`` with a kernel receive timeout (a
#: ``struct timeval``); elsewhere the body is read by ``http.client`` as usual
_WAITALL = hasattr(socket, "MSG_WAITALL") and sys.platform in ("linux", "darwin")
_RCVTIMEO = struct.pack("ll", int(TIMEOUT_S), 0)
_NO_RCVTIMEO = struct.pack("ll", 0, 0)
