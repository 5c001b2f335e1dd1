"""Keyed identities: what a cache may hold about a source file without naming it.

A cache is often shared (a bucket, a lab drive) more widely than the images it was made from.
Anything it stores that is derived from a source path or from a file's bytes lets its reader test
guesses ("is MRN 0042117's scan in here?"): an unsalted sha256 of a relative path was brute
forced from a 16-hex prefix (issue 11, item 7), and a file's sha256 is a membership test for
anyone holding the file. So:

* With an **identity key** (``LATENTDS_IDENTITY_KEY``, or the storage option ``identity_key``,
  which is taken out before the options reach fsspec), such values are HMAC-SHA256 under that
  key. The key is never written to the cache; only a short key *check* is (so a job run with
  another key says so instead of missing every record). Without the key a reader can test
  nothing.
* Without a key, nothing of the kind is stored: no content hash, no path hash. Failure records
  are named by the sample key, which the manifest has always held for every encoded sample
  (docs/decisions.md, "Identities in a cache").

Failure reasons are stored from the exception's structure (:func:`stored_reason`), never by
formatting a path into a message and trying to take it out again.

docs/privacy.md says what in a cache can and cannot identify a patient.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import ConfigError

__all__ = ["ENV", "OPTION", "SCHEME", "IdentityKey", "Identities", "content_matches", "resolve", "stored_reason"]

ENV = "LATENTDS_IDENTITY_KEY"
OPTION = "identity_key"
SCHEME = "hmac-sha256"
MIN_KEY_BYTES = 16  # a short passphrase could be brute forced through the stored MACs


@dataclass(frozen=True)
class IdentityKey:
    """A secret for keyed identities. Its ``repr`` never shows it."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_KEY_BYTES:
            raise ConfigError(f"{ENV} / storage option {OPTION!r}: the identity key is {len(self.secret)} bytes; "
                              f"use at least {MIN_KEY_BYTES} random bytes, e.g. "
                              "`python -c \"import secrets; print(secrets.token_hex(32))\"`")

    def mac(self, purpose: str, *parts: str) -> str:
        """HMAC-SHA256 of ``purpose`` and ``parts`` (NUL-separated: no two tuples collide), hex."""
        msg = "\0".join((purpose, *parts)).encode("utf-8", "surrogatepass")
        return hmac.new(self.secret, msg, hashlib.sha256).hexdigest()

    @property
    def check(self) -> str:
        """8 hex digits that tell two keys apart; stored with keyed values (not enough to test a guess)."""
        return self.mac("latentds-identity-key-check")[:8]


def resolve(storage_options: Mapping[str, Any] | None = None, key: str | bytes | None = None
            ) -> tuple[IdentityKey | None, dict[str, Any]]:
    """The identity key (``key``, else the storage option ``identity_key``, else the environment
    variable ``LATENTDS_IDENTITY_KEY``; None if none is set) and the storage options without it."""
    opts = dict(storage_options or {})
    given = opts.pop(OPTION, None)
    raw = key if key is not None else given if given is not None else os.environ.get(ENV) or None
    if raw is None:
        return None, opts
    return IdentityKey(raw.encode() if isinstance(raw, str) else bytes(raw)), opts


class Identities:
    """The values a cache stores about a source file, under ``key`` or (None) without one."""

    def __init__(self, key: IdentityKey | None) -> None:
        self.key = key

    @property
    def tag(self) -> str:
        """What a failure record says about how its name was made (``none`` or the key check)."""
        return f"{SCHEME}/{self.key.check}" if self.key else "none"

    def failure_name(self, root_id: str, rel: str, sample_key: str) -> str:
        """The name of a file's failure record (``failures/<name>.json``).

        Keyed: HMAC of the tree's identity and the relative path, so the record follows the path
        (a fixed file's record goes when it is encoded) and two trees sharing a cache never share
        a record. Without a key: the sample key (itself a hash of tree, path, size and mtime or
        ETag, already in the manifest for every encoded file); no hash of the path alone."""
        if self.key is None:
            return sample_key[:32]
        return "k" + self.key.mac("failure", root_id, rel)[:31]

    def content_id(self, sha256_hex: str) -> str:
        """What to store as a file's content identity: keyed, or nothing (the empty string)."""
        if self.key is None:
            return ""
        return f"{SCHEME}:{self.key.check}:{self.key.mac('content', sha256_hex)}"

    def path_id(self, root_id: str, rel: str) -> str | None:
        """A keyed id of a file's path for entry metadata, or None: store nothing without a key."""
        return None if self.key is None else self.key.mac("path", root_id, rel)[:32]


def content_matches(stored: str, sha256_hex: str, key: IdentityKey | None) -> bool | None:
    """Whether a stored content identity is that of bytes with sha256 ``sha256_hex``.

    True / False, or None when it cannot tell: nothing was stored (written without a key), or
    it was written under another key or none is given now. A plain sha256 (caches written
    before keyed identities) is compared as it is: reading those needs no key."""
    if not stored:
        return None
    if not stored.startswith(SCHEME + ":"):
        return hmac.compare_digest(stored, sha256_hex)
    _, check, mac = stored.split(":", 2)
    if key is None or key.check != check:
        return None
    return hmac.compare_digest(mac, key.mac("content", sha256_hex))


def _spellings(names: tuple[str, ...]) -> set[str]:
    out: set[str] = set()
    for n in names:
        if not n:
            continue
        base = os.path.basename(n.rstrip("/"))
        stem = os.path.splitext(base)[0]
        for s in (n, base, stem):
            if len(s) >= 3:  # a very short name would match unrelated text
                out |= {s, repr(s)[1:-1], s.encode("unicode_escape").decode("ascii")}
    return out


def stored_reason(exc: BaseException, *names: str) -> str:
    """A failure reason fit to store in a cache, built from the exception's structure.

    An ``OSError`` (or an error raised from one) keeps its errno and strerror only: its file name
    attributes, which ``str()`` formats with ``repr`` (a tab or newline in a patient's file name
    comes out escaped), are never read. Other errors keep their message only if no spelling of
    the file's path, name or stem (as written, as ``repr`` escapes it) appears in it, after the
    leading ``"<file>: "`` of the project's error style is dropped; otherwise just the error type
    and a note: the message is withheld, not edited."""
    cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else None
    for e in (exc, cause):
        if isinstance(e, OSError) and e.strerror:
            head = f"{type(exc).__name__}: " if e is cause else ""
            return f"{head}[Errno {e.errno}] {e.strerror}"
    msg = str(exc)
    # the project's error style is "<file>: what is wrong": that leading name is structure, dropped
    for n in sorted((s for s in _spellings(names) if "/" in s or s in names), key=len, reverse=True):
        if msg.startswith(n + ": "):
            msg = msg[len(n) + 2:]
            break
    if any(s in msg for s in _spellings(names)):
        return (f"{type(exc).__name__} (its message quotes the file's path, so it is not stored in the cache; "
                "the job's report and log name the file and give the message)")
    return msg
