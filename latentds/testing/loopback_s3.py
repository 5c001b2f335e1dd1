"""A real S3 server on 127.0.0.1 (moto's server mode) and a fault-injecting proxy in front of it,
for tests and benchmarks. Loopback only; nothing here ever listens on another address.

The proxy forwards every HTTP request unchanged and can answer the first N requests (or the
first N of one method) with a real ``503 SlowDown`` or ``403 AccessDenied`` S3 error, so the
client stack (s3fs -> aiobotocore -> aiohttp) sees genuine server errors: nothing is mocked.
It also counts requests by method, which is how benchmarks measure requests per sample.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FaultProxy", "free_port", "LOOPBACK", "MotoS3", "storage_options"]

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


class MotoS3:
    """moto's ThreadedMotoServer bound to 127.0.0.1 on a free port."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self._server = ThreadedMotoServer(ip_address=LOOPBACK, port=self.port, verbose=False)

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> "MotoS3":
        import logging

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()


def storage_options(endpoint: str, **extra: Any) -> dict[str, Any]:
    """s3fs options for a loopback endpoint with moto's dummy credentials."""
    opts: dict[str, Any] = {"key": "testing-key-id", "secret": "testing-secret-value-123",
                            "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
    opts.update(extra)
    return opts


_ERRORS = {
    503: ("SlowDown", "Please reduce your request rate."),
    500: ("InternalError", "We encountered an internal error. Please try again."),
    403: ("AccessDenied", "Access Denied"),
}


class FaultProxy:
    """HTTP proxy on 127.0.0.1 in front of ``upstream`` that injects S3 errors on request."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.counts: Counter[str] = Counter()
        self.injected: Counter[int] = Counter()
        self.bytes_out: Counter[str] = Counter()  # response body bytes per method (bytes per epoch)
        self.upstream_s = 0.0  # seconds spent waiting on the server behind (its share of the time)
        #: the longest a request took here (body read to answer sent), and per method how many took
        #: longer than a client's read timeout (s3fs: 15 s): the client then retried a request
        #: that may still reach the server after its retry (soak diagnostics on a loaded machine)
        self.slowest_s = 0.0
        self.over_15s: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._fail_left = 0
        self._fail_status = 503
        self._fail_methods: set[str] | None = None
        self._every = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out separately: no 40 ms delayed-ACK stalls

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _handle(self) -> None:
                t_in = time.perf_counter()
                try:
                    self._forward()
                finally:
                    took = time.perf_counter() - t_in
                    with proxy._lock:
                        proxy.slowest_s = max(proxy.slowest_s, took)
                        if took > 15.0:
                            proxy.over_15s[self.command] += 1

            def _forward(self) -> None:
                body = self._body()
                status = proxy._should_fail(self.command)
                if status:
                    code, msg = _ERRORS[status]
                    payload = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                               f"<Message>{msg}</Message><RequestId>fault</RequestId></Error>").encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("transfer-encoding", "connection", "content-length", "expect")}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(LOOPBACK, proxy.upstream_port, timeout=60)
                try:
                    t0 = time.perf_counter()
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    with proxy._lock:
                        proxy.upstream_s += time.perf_counter() - t0
                        proxy.bytes_out[self.command] += len(data)
                    self.send_response(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                            self.send_header(k, v)
                    # a HEAD answer has no body but the object's own length: S3 clients take an
                    # object's size from it (it read 0 through this proxy, so a source's identity
                    # from HEAD differed from the one a listing gave)
                    head_len = resp.getheader("Content-Length") if self.command == "HEAD" else None
                    self.send_header("Content-Length", head_len if head_len is not None else str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> "FaultProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fail_next(self, n: int, status: int = 503, methods: set[str] | None = None) -> None:
        """Answer the next ``n`` requests (of ``methods``, default all) with ``status``."""
        with self._lock:
            self._fail_left, self._fail_status, self._fail_methods = n, status, methods

    def fail_every(self, k: int, status: int = 503) -> None:
        """Answer every ``k``-th request with ``status`` (0 turns it off)."""
        with self._lock:
            self._every, self._fail_status = k, status

    def reset_counts(self) -> None:
        with self._lock:
            self.counts.clear()
            self.injected.clear()
            self.bytes_out.clear()
            self.upstream_s = 0.0

    def _should_fail(self, method: str) -> int:
        with self._lock:
            self.counts[method] += 1
            if self._fail_left > 0 and (self._fail_methods is None or method in self._fail_methods):
                self._fail_left -= 1
                self.injected[self._fail_status] += 1
                return self._fail_status
            if self._every and sum(self.counts.values()) % self._every == 0:
                self.injected[self._fail_status] += 1
                return self._fail_status
            return 0
