"""Signed shard GETs (``latentds.store.signed``): the kept-alive ``http.client`` path and its
one-``recv`` body read return exactly the object's bytes, and anything short of a clean answer
turns the fast path off (``None``: the caller reads through the backend)."""

from __future__ import annotations

import os
import pickle
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest

from latentds.store.signed import SignedRanges


@pytest.fixture()
def signed_object(s3_env: Any) -> Iterator[tuple[Any, str, bytes]]:
    import s3fs

    bucket = s3_env.new_bucket()
    fs = s3fs.S3FileSystem(**s3_env.options(), skip_instance_cache=True)
    data = os.urandom(3 << 20)  # over 1 MiB: the MSG_WAITALL body path
    fs.pipe_file(f"{bucket}/shard.tar", data)
    yield s3_env, fs.sign(f"{bucket}/shard.tar", expiration=600), data


def test_ranges_read_through_a_signed_url_are_the_objects_bytes(signed_object) -> None:
    env, url, data = signed_object
    sr = SignedRanges({"s": url}, time.time() + 600)
    env.proxy.reset_counts()
    assert sr.get_range("s", 0, len(data)) == data
    assert sr.get_range("s", 5, (2 << 20) + 7) == data[5:(2 << 20) + 7]
    assert sr.get_range("s", 1 << 20, len(data) + 999) == data[1 << 20:]  # short at the end, as a backend read
    assert sr.get_range("s", 0, 100) == data[:100]  # under 1 MiB: http.client's own read
    assert env.proxy.counts["GET"] == 4 and not sr._off
    copy = pickle.loads(pickle.dumps(sr))  # what a spawned worker gets: URLs, no connection
    assert copy.get_range("s", 7, 9) == data[7:9]
    results: list[bytes | None] = []
    threads = [threading.Thread(target=lambda: results.append(sr.get_range("s", 0, len(data)))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [data, data]  # a connection per thread (prefetch threads)
    assert sr.get_range("other", 0, 1) is None  # not signed: the backend reads it
    # moto itself answers "Connection: close" (the proxy keeps connections alive): the body is
    # read from the response's socket, and the next GET opens a new connection
    direct = SignedRanges({"s": url.replace(env.proxy.endpoint, env.moto.endpoint)}, time.time() + 600)
    assert direct.get_range("s", 0, len(data)) == data and direct.get_range("s", 3, 2 << 20) == data[3:2 << 20]


def test_a_refused_or_expired_url_turns_the_fast_path_off(signed_object) -> None:
    env, url, data = signed_object
    assert SignedRanges({"s": url}, time.time() - 1).get_range("s", 0, 10) is None  # expired: no request
    sr = SignedRanges({"s": url}, time.time() + 600)
    env.proxy.fail_next(1, 503)
    assert sr.get_range("s", 0, len(data)) is None and sr._off
    env.proxy.reset_counts()
    assert sr.get_range("s", 0, 10) is None  # off for the rest of the process: no further request
    assert env.proxy.counts["GET"] == 0


class _CutShort(BaseHTTPRequestHandler):
    """Promises 2 MiB and sends 1 MiB, then closes (a connection dropped mid-body)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(206)
        self.send_header("Content-Length", str(2 << 20))
        self.end_headers()
        self.wfile.write(b"x" * (1 << 20))
        self.wfile.flush()
        self.close_connection = True


def test_a_body_cut_short_is_not_returned() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CutShort)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        sr = SignedRanges({"s": f"http://127.0.0.1:{server.server_port}/shard.tar?X-Amz-Signature=x"},
                          time.time() + 600)
        assert sr.get_range("s", 0, 2 << 20) is None and sr._off
    finally:
        server.shutdown()
        server.server_close()


class _Odd(BaseHTTPRequestHandler):
    """Answers that look whole but are not the range asked for, or cannot prove they are whole."""

    protocol_version = "HTTP/1.1"
    mode = "ok"

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        a, b = (int(x) for x in self.headers["Range"].split("=")[1].split("-"))
        blob = _BLOB
        body = blob[a:b + 1]
        self.send_response(206)
        if self.mode == "shifted":  # another range's bytes, labelled as such
            body = blob[a + 10:b + 11]
            self.send_header("Content-Range", f"bytes {a + 10}-{a + 10 + len(body) - 1}/{len(blob)}")
        elif self.mode == "unlabelled":  # no Content-Range at all
            pass
        else:
            self.send_header("Content-Range", f"bytes {a}-{a + len(body) - 1}/{len(blob)}")
        if self.mode == "no-length":  # close-delimited and cut: nothing tells it from a whole body
            body = body[:len(body) // 2]
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.mark.parametrize("mode", ["shifted", "unlabelled", "no-length"])
def test_an_answer_that_is_not_provably_the_range_is_not_returned(mode: str) -> None:
    """Not the asked bytes, or no proof they are whole: the fast path turns off (the backend
    reads the range), instead of handing the reader bytes that fail its CRC as a 'corrupt shard'."""
    handler = type("H", (_Odd,), {"mode": mode})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/shard.tar?X-Amz-Signature=x"
    try:
        ok = SignedRanges({"s": url}, time.time() + 600)
        handler.mode = "ok"
        assert ok.get_range("s", 3, (1 << 20) + 9) == _BLOB[3:(1 << 20) + 9]  # the same server, answering right
        handler.mode = mode
        sr = SignedRanges({"s": url}, time.time() + 600)
        assert sr.get_range("s", 3, (1 << 20) + 9) is None and sr._off
    finally:
        server.shutdown()
        server.server_close()


_BLOB = os.urandom((2 << 20) + 123)


class _Ranged(BaseHTTPRequestHandler):
    """A plain HTTP/1.1 object server answering ``Range: bytes=a-b`` with 206 (kept alive)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        a, b = (int(x) for x in self.headers["Range"].split("=")[1].split("-"))
        body = _BLOB[a:b + 1]
        self.send_response(206)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Range", f"bytes {a}-{a + len(body) - 1}/{len(_BLOB)}")
        self.end_headers()
        self.wfile.write(body)


def _self_signed(tmp_path: Any) -> tuple[str, str]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


@pytest.mark.parametrize("mode", ["tls", "no-waitall"])
def test_tls_and_platforms_without_waitall_read_the_same_bytes(tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                                                               mode: str) -> None:
    """Real S3 is HTTPS, where the body is read by http.client as usual (no MSG_WAITALL on a TLS
    socket); so do platforms without it. Same bytes either way, over a kept-alive connection."""
    import ssl

    import latentds.store.signed as signed

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ranged)
    scheme = "http"
    if mode == "tls":
        cert, key = _self_signed(tmp_path)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        monkeypatch.setenv("SSL_CERT_FILE", cert)  # the default client context trusts it
        scheme = "https"
    else:
        monkeypatch.setattr(signed, "_WAITALL", False)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        sr = SignedRanges({"s": f"{scheme}://127.0.0.1:{server.server_port}/shard.tar?X-Amz-Signature=x"},
                          time.time() + 600)
        assert sr.get_range("s", 0, len(_BLOB)) == _BLOB
        assert sr.get_range("s", 9, (1 << 20) + 77) == _BLOB[9:(1 << 20) + 77]
        assert not sr._off
        if mode == "tls":
            assert isinstance(sr._local.conn.sock, ssl.SSLSocket)  # kept alive, and TLS indeed
    finally:
        server.shutdown()
        server.server_close()
