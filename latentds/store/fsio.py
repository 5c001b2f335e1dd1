"""fsspec plumbing: every path is a URL plus ``storage_options`` (docs/design.md invariant 9).

Filesystems are created lazily and per process, because some (s3fs) are not fork-safe and a
DataLoader worker must not reuse its parent's event loop or sockets.
"""

from __future__ import annotations

import errno
import os
import random
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from .forksafe import install as _install_fork_hooks

_install_fork_hooks()  # a forked DataLoader worker never closes its parent's pooled S3 sockets (store/forksafe.py)

__all__ = ["Location", "RETRY_STATS", "access_hint", "call", "is_access_error", "is_transient", "redact",
    "redact_options", "strip_protocol_url", "write_atomic"]


def strip_protocol_url(url: str | os.PathLike[str]) -> str:
    """Normalise a local path or URL to a string URL (local paths become absolute)."""
    s = os.fspath(url)
    if "://" not in s:
        s = os.path.abspath(os.path.expanduser(s))
    return s.rstrip("/") or "/"


_SECRET_WORDS = ("key", "secret", "token", "password", "passwd", "credential", "session", "auth", "sas")


def redact_options(options: Any) -> Any:
    """``storage_options`` fit to print or log: values of secret-looking keys (``key``,
    ``secret``, ``token``, ``aws_secret_access_key``, ...), at any depth, become ``'***'``.
    A ``repr`` of a location or a bulk spec ends up in tracebacks, Dask dashboards and logs."""
    if isinstance(options, dict):
        return {k: ("***" if isinstance(k, str) and any(w in k.lower() for w in _SECRET_WORDS) and v
                    and not isinstance(v, (dict, bool)) else redact_options(v)) for k, v in options.items()}
    if isinstance(options, (list, tuple)):
        return type(options)(redact_options(v) for v in options)
    return options


@dataclass
class Location:
    """A directory on some fsspec filesystem, opened lazily in each process."""

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    _fs: Any = field(default=None, init=False, repr=False, compare=False)
    _pid: int = field(default=-1, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.url = strip_protocol_url(self.url)

    def __repr__(self) -> str:  # never the credentials in storage_options (issue 11, item 10)
        return f"Location(url={self.url!r}, storage_options={redact_options(self.storage_options)!r})"

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        if self._fs is None or self._pid != os.getpid():
            opts = self.storage_options
            if fsspec.core.split_protocol(self.url)[0] not in (None, "file", "local"):
                # no listings cache: fsspec keeps every listing per instance (one instance per
                # options in a process) and s3fs answers info/exists/cat_file from it, so an
                # object another process wrote after a listing read as missing (the S3 soak;
                # docs/reliability.md). Caches and source trees change under us all the time.
                # Source identities do not depend on it: listing and HEAD info give the same
                # identity (latentds.sample.source.stamp).
                opts = {**opts, "use_listings_cache": False}
            try:
                fs, _ = fsspec.core.url_to_fs(self.url, **opts)
            except ValueError as exc:
                if not str(exc).startswith("Protocol not known"):
                    raise
                from ..errors import ConfigError  # a ValueError too, as fsspec's was

                protocol = str(exc).rsplit(":", 1)[-1].strip()  # fsspec names the link it does not know
                raise ConfigError(f"{self.url}: unknown storage protocol {protocol!r}; use a local folder or an fsspec "
                                  "URL such as s3://bucket/prefix, gs://..., az://..., memory://...") from None
            if hasattr(fs, "retries") and type(fs).__module__.startswith("s3fs"):
                # latentds' `call` owns the retry policy (capped backoff, jitter, counted). s3fs'
                # own loop would nest under it (5 x 6 attempts, uncounted), so it makes one try.
                # botocore's retry config (storage_options config_kwargs) is left as the user set it.
                fs.retries = 1
            self._fs, self._pid = fs, os.getpid()
        return self._fs

    @property
    def path(self) -> str:
        """The location as a path for :attr:`fs` (protocol stripped)."""
        return self.fs._strip_protocol(self.url)

    def join(self, *parts: str) -> str:
        return "/".join([self.path.rstrip("/"), *[p.strip("/") for p in parts]])

    def child(self, *parts: str) -> "Location":
        return Location("/".join([self.url.rstrip("/"), *[p.strip("/") for p in parts]]), dict(self.storage_options))

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def __getstate__(self) -> dict[str, Any]:
        # The filesystem object is never shipped to another process; it is re-created there.
        return {"url": self.url, "storage_options": self.storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.url = state["url"]
        self.storage_options = state["storage_options"]
        self._fs, self._pid = None, -1


def write_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either nothing or the whole object.

    Local disk: a writer-unique temp file in the same directory, then ``os.replace`` (atomic
    rename). Object stores: a single PUT is already atomic, so ``pipe`` is enough.
    """
    if isinstance(fs, LocalFileSystem):
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    else:
        fs.pipe_file(path, data)


# -- faults: retry transient errors, fail fast on access errors, never leak secrets -------------

#: Per-process counters, read by ``inspect`` / tests / benchmarks: how many transient errors
#: were retried and how many operations gave up.
RETRY_STATS: dict[str, int] = {"retries": 0, "gave_up": 0}

#: errno values fsspec/s3fs use for transient server conditions: 503 SlowDown/ServiceUnavailable
#: become EBUSY, 500 InternalError becomes EREMOTEIO (121 on Linux).
_TRANSIENT_ERRNOS = {errno.EBUSY, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED,
                     errno.ECONNABORTED, getattr(errno, "EREMOTEIO", 121)}
_TRANSIENT_WORDS = ("SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout",
                    "reduce your request rate", "Connection reset", "timed out", "Throttl")
_ACCESS_WORDS = ("AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                 "InvalidToken", "NoCredentials", "Unable to locate credentials")
_SECRET_OPTION_NAMES = ("secret", "key", "token", "password", "aws_secret_access_key", "aws_access_key_id",
                        "aws_session_token", "credential", "sas_token", "account_key")


def redact(text: str, storage_options: dict[str, Any] | None = None) -> str:
    """Remove credentials from a message: secret-looking option values and URL signatures."""
    for name, value in _secret_values(storage_options or {}):
        if value and len(value) >= 4:
            text = text.replace(value, f"<{name} redacted>")
    for env in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID"):
        v = os.environ.get(env)
        if v and len(v) >= 4:
            text = text.replace(v, f"<{env} redacted>")
    # presigned URLs carry their credential in the query string: SigV4 (X-Amz-*) and the query
    # signing s3fs/botocore still produce for plain S3 GET URLs (Signature, AWSAccessKeyId,
    # x-amz-security-token)
    return re.sub(r"((?:X-Amz-(?:Signature|Credential|Security-Token)|Signature|AWSAccessKeyId|x-amz-security-token)=)"
                  r"[^&\s]+", r"\1<redacted>", text, flags=re.IGNORECASE)


def _secret_values(opts: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for k, v in opts.items():
        if isinstance(v, dict):
            out += _secret_values(v, f"{prefix}{k}.")
        elif isinstance(v, str) and any(s in k.lower() for s in _SECRET_OPTION_NAMES):
            out.append((f"{prefix}{k}", v))
    return out


def is_transient(exc: BaseException) -> bool:
    """5xx, throttling, timeouts, dropped connections: worth retrying."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    name = type(exc).__name__
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ClientPayloadError",
                "ServerDisconnectedError", "ClientOSError", "IncompleteRead", "ResponseParserError"):
        return True
    msg = str(exc)
    return not is_access_error(exc) and any(w in msg for w in _TRANSIENT_WORDS)


def is_access_error(exc: BaseException) -> bool:
    if isinstance(exc, PermissionError):
        return True
    name = type(exc).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
        return True
    return any(w in str(exc) for w in _ACCESS_WORDS)


def access_hint(url: str) -> str:
    # Local (and memory://) paths are absolute after fsspec strips the protocol; object-store
    # paths are "bucket/key".
    if not url.startswith(("/", "file://", "memory://")) and not (len(url) > 2 and url[1:3] == ":\\"):
        return ("check the credentials (storage_options key/secret/token, or the AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY / AWS_PROFILE environment), the endpoint (client_kwargs.endpoint_url or "
                "AWS_ENDPOINT_URL) and that the bucket policy allows this operation")
    return "check the file permissions of the cache directory"


T = TypeVar("T")


def call(op: Callable[[], T], what: str, *, storage_options: dict[str, Any] | None = None,
         attempts: int = 6, base_delay: float = 0.05, max_delay: float = 2.0) -> T:
    """Run one storage operation: retry transient errors with capped exponential backoff
    (counted in :data:`RETRY_STATS`), fail fast on access errors with a message saying what
    to fix. ``FileNotFoundError`` passes through untouched: callers decide what a miss means.
    ``what`` names the object (path) and appears in every error; credentials never do."""
    from ..errors import StoreAccessError, TransientStoreError

    delay = base_delay
    for attempt in range(attempts):
        try:
            return op()
        except FileNotFoundError:
            raise
        except Exception as exc:  # classified below; unknown errors propagate unchanged
            if is_access_error(exc):
                msg = redact(f"{what}: access denied ({type(exc).__name__}: {exc}); {access_hint(what)}",
                             storage_options)
                raise StoreAccessError(msg) from None
            if not is_transient(exc):
                raise
            if attempt == attempts - 1:
                RETRY_STATS["gave_up"] += 1
                msg = redact(f"{what}: transient store error persisted after {attempts} attempts "
                             f"({type(exc).__name__}: {exc})", storage_options)
                raise TransientStoreError(msg) from None
            RETRY_STATS["retries"] += 1
            # full jitter keeps many DataLoader workers from retrying in lock-step
            time.sleep(random.uniform(0, delay))
            delay = min(max_delay, delay * 2)
    raise AssertionError("unreachable")
