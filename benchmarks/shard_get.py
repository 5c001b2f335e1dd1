"""One 8 MiB shard GET, by client, in a forked worker as a DataLoader runs it (issue 15 item 1).

The streaming reader's time in steady state is mostly waiting on its shard GETs. This times one
ranged GET of a whole 8 MiB object against the loopback moto server (behind the counting proxy
of ``latentds.testing.loopback_s3``, as ``s3_vs_litdata.py`` reads it), per client:

* ``s3fs``: ``S3FileSystem.cat_file(path, start, end)`` (what ``Backend.get_range`` calls);
* ``urllib``: a presigned URL (``fs.sign``) read with ``urllib.request`` (a new connection per GET;
  what ``latentds/store/signed.py`` did before this pass);
* ``http.client``: the same URL over a kept-alive ``http.client`` connection per thread;
* ``waitall``: the same URL through ``latentds.store.signed.SignedRanges`` (``http.client`` for the
  headers, then the body in one ``recv_into(MSG_WAITALL)``: the GIL released once per GET);
* ``obstore``: LitData's client (Rust), if installed - benchmark-only, for comparison.

Each client runs in a freshly forked child (fork after the parent made its own s3fs client, as
a DataLoader worker inherits the dataset), makes one untimed warm-up GET (client set-up), then
times ``--gets`` GETs with 1 or 2 downloads in flight (two threads: the reader's prefetch), and,
with ``--decode``, how far a CPU loop standing for the decode thread gets meanwhile (a client
that holds the GIL while it reads the body slows the decode). Methods interleave per round.

    nice -n 10 python benchmarks/shard_get.py --rounds 5
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import threading
import time
import warnings
from typing import Any, Callable

__all__ = ["main"]

SIZE = 8 << 20


def _cpu_spin(stop: threading.Event, out: list[int]) -> None:
    """Pure-Python work holding the GIL in short slices, like the decode loop (per-sample CRC,
    header checks, tensor wrap): the iterations reached measure the GIL it got."""
    n = 0
    while not stop.is_set():
        for _ in range(1000):
            n += 1
    out.append(n)


def _make_get(method: str, opts: dict[str, Any], path: str, url: str) -> Callable[[], bytes]:
    rng = f"bytes=0-{SIZE - 1}"
    if method == "s3fs":
        import s3fs

        fs = s3fs.S3FileSystem(**opts, skip_instance_cache=True)
        return lambda: fs.cat_file(path, start=0, end=SIZE)
    if method == "urllib":
        import urllib.request

        def get() -> bytes:
            with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": rng}), timeout=15) as r:
                return r.read()
        return get
    if method == "http.client":
        import http.client
        import urllib.parse

        u = urllib.parse.urlsplit(url)
        target = u.path + ("?" + u.query if u.query else "")
        local = threading.local()

        def get() -> bytes:
            conn = getattr(local, "conn", None)
            if conn is None:
                cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
                conn = local.conn = cls(u.hostname, u.port, timeout=15)
            conn.request("GET", target, headers={"Range": rng})
            r = conn.getresponse()
            return r.read()
        return get
    if method == "waitall":
        from latentds.store.signed import SignedRanges

        sr = SignedRanges({"x": url}, time.time() + 3600)
        return lambda: sr.get_range("x", 0, SIZE)
    if method == "obstore":
        import obstore
        from obstore.store import S3Store

        bucket, key = path.split("/", 1)
        store = S3Store(bucket, endpoint=opts["client_kwargs"]["endpoint_url"], access_key_id=opts["key"],
                        secret_access_key=opts["secret"], region="us-east-1", client_options={"allow_http": True})
        return lambda: bytes(obstore.get_range(store, key, start=0, end=SIZE))
    raise ValueError(method)


def _child(method: str, opts: dict[str, Any], path: str, url: str, gets: int, inflight: int, decode: bool,
           q: Any) -> None:
    try:
        get = _make_get(method, opts, path, url)
        assert len(get()) == SIZE  # warm-up: client set-up, first connection
        per: list[float] = []
        lock = threading.Lock()
        todo = [gets]

        def worker() -> None:
            while True:
                with lock:
                    if todo[0] <= 0:
                        return
                    todo[0] -= 1
                t = time.perf_counter()
                n = len(get())
                dt = time.perf_counter() - t
                assert n == SIZE, n
                with lock:
                    per.append(dt)

        stop, spun = threading.Event(), []
        spin = threading.Thread(target=_cpu_spin, args=(stop, spun)) if decode else None
        t0 = time.perf_counter()
        if spin:
            spin.start()
        threads = [threading.Thread(target=worker) for _ in range(inflight)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        if spin:
            stop.set()
            spin.join()
        q.put({"per_get": statistics.median(per), "wall": wall, "mb_s": gets * SIZE / wall / 1e6,
               "spin_per_s": (spun[0] / wall) if spun else 0.0})
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        q.put({"error": repr(e)})


def _spin_alone(seconds: float = 0.5) -> float:
    stop, spun = threading.Event(), []
    t = threading.Thread(target=_cpu_spin, args=(stop, spun))
    t0 = time.perf_counter()
    t.start()
    time.sleep(seconds)
    stop.set()
    t.join()
    return spun[0] / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--gets", type=int, default=8, help="timed GETs per child")
    ap.add_argument("--direct", action="store_true", help="to moto directly, not through the counting proxy")
    ap.add_argument("--decode", action="store_true", help="also run a CPU loop standing for the decode thread")
    ap.add_argument("--tls", action="store_true",
                    help="the proxy speaks HTTPS (a self-signed certificate for 127.0.0.1, made with openssl): "
                         "real S3's transport, where the one-recv body read does not apply")
    ap.add_argument("--methods", nargs="*", default=["s3fs", "urllib", "http.client", "waitall", "obstore"])
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    for k in [k for k in os.environ if k.startswith("AWS_")]:
        del os.environ[k]
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    import s3fs

    from latentds.testing.loopback_s3 import FaultProxy, MotoS3, storage_options

    methods = list(args.methods)
    try:
        import obstore  # noqa: F401
    except ImportError:
        methods = [m for m in methods if m != "obstore"]
    moto = MotoS3().start()
    proxy = FaultProxy(moto.port)
    endpoint = moto.endpoint if args.direct else proxy.endpoint
    opts = storage_options(endpoint)
    if args.tls:
        import ssl
        import subprocess
        import tempfile

        certs = tempfile.mkdtemp(prefix="shard-get-tls-")
        cert, key = f"{certs}/cert.pem", f"{certs}/key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
                       check=True, capture_output=True)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        proxy._server.socket = ctx.wrap_socket(proxy._server.socket, server_side=True)
        os.environ["SSL_CERT_FILE"] = cert  # the standard library's default context trusts it (children inherit)
        endpoint = endpoint.replace("http://", "https://")
        opts = storage_options(endpoint)
        opts["client_kwargs"]["verify"] = cert
        methods = [m for m in methods if m != "obstore"]  # not configured for a private CA here
    proxy.start()
    try:
        fs = s3fs.S3FileSystem(**opts, skip_instance_cache=True)  # the parent's client, inherited by forks
        fs.call_s3("create_bucket", Bucket="bench")
        path = "bench/shard-000000.tar"
        fs.pipe_file(path, os.urandom(SIZE))
        url = fs.sign(path, expiration=3600)
        ctx = mp.get_context("fork")
        res: dict[tuple[str, int], list[dict[str, float]]] = {}
        baseline = _spin_alone()
        for r in range(args.rounds):
            order = methods if r % 2 == 0 else list(reversed(methods))
            for inflight in (1, 2):
                for m in order:
                    q = ctx.Queue()
                    p = ctx.Process(target=_child, args=(m, opts, path, url, args.gets, inflight, args.decode, q))
                    p.start()
                    out = q.get(timeout=300)
                    p.join()
                    if "error" in out:
                        raise RuntimeError(f"{m}: {out['error']}")
                    res.setdefault((m, inflight), []).append(out)
                    print(f"round {r}: {m:12s} {inflight} in flight: {out['per_get'] * 1e3:6.1f} ms per GET, "
                          f"{out['mb_s']:6.0f} MB/s" + (f", decode loop {out['spin_per_s'] / baseline:4.2f} of alone"
                                                         if args.decode else ""), flush=True)
        print(f"\none {SIZE >> 20} MiB ranged GET, {'moto directly' if args.direct else 'moto behind the counting proxy'}"
              f"{' over TLS' if args.tls else ''} "
              f"on 127.0.0.1, forked child per measurement, {args.gets} GETs each, {args.rounds} rounds (medians); "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        for inflight in (1, 2):
            base = statistics.median(e["per_get"] for e in res[("s3fs", inflight)]) if "s3fs" in methods else None
            for m in methods:
                es = res[(m, inflight)]
                per = statistics.median(e["per_get"] for e in es)
                mbs = statistics.median(e["mb_s"] for e in es)
                extra = f", decode loop at {statistics.median(e['spin_per_s'] for e in es) / baseline:4.2f} of its rate alone" \
                    if args.decode else ""
                rel = f" ({per / base:4.2f}x s3fs)" if base else ""
                print(f"  {inflight} in flight  {m:12s} {per * 1e3:6.1f} ms per GET{rel}, {mbs:6.0f} MB/s{extra}")
    finally:
        proxy.stop()
        moto.stop()


if __name__ == "__main__":
    main()
