"""Staging objects as ``np.savez`` writes them, read without ``zipfile`` or ``np.load``.

A staging object is an uncompressed zip of ``mean.npy``, ``meta.npy`` and (when the codec has
one) ``std.npy``. Compaction reads one per sample, so this is on its per-sample path: here the
zip's local headers are read with one precompiled ``struct`` each, every member is checked
against its CRC-32 as zipfile would, ``.npy`` headers are looked up by their bytes (parsed once
per layout by numpy's own header reader), and the arrays' sha256 runs over the stored data.
Anything that is not exactly that layout, corrupt objects included, is left to the general
reader in :mod:`latentds.store.entries`, which raises the errors it always raised.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import struct
import zlib
from typing import Any

import numpy as np

from .npy import dtype_name

__all__ = ["FastStaged", "canonical_metas", "fast_parse", "fast_parse_many", "npy_info", "stored_members"]

_LOCAL = struct.Struct("<4s5H3L2H")  # a zip local file header (30 bytes)
# the local header numpy writes (force_zip64: sizes in a 20-byte zip64 extra field), with the
# member name and that field: 58 bytes for "mean.npy" / "meta.npy", 57 for "std.npy"
_Z8 = struct.Struct("<4s5H3L2H8s2H2Q")
_Z7 = struct.Struct("<4s5H3L2H7s2H2Q")
_SIG = b"PK\x03\x04"
_FF = 0xFFFFFFFF

#: canonical_json for values json.loads made (no ``default=`` hook is ever needed for them), as
#: one prebuilt C encoder: the same text without building an encoder per call
_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode
#: .npy header bytes -> (dtype, shape, data bytes, header is what npy_bytes writes for them)
_NPY_INFO: dict[bytes, tuple[np.dtype, tuple[int, ...], int, bool]] = {}
_DIGEST_PREFIX: dict[tuple[np.dtype, tuple[int, ...]], Any] = {}

#: (mean, std, meta, stored mean .npy, stored std .npy, stored metadata JSON)
FastStaged = tuple[np.ndarray, "np.ndarray | None", dict, memoryview, "memoryview | None", bytes]


def stored_members(data: bytes) -> dict[str, memoryview] | None:
    """The members of an uncompressed zip as ``np.savez`` writes it (local headers back to back,
    sizes in the header or its zip64 extra field, no data descriptors), each checked against
    its CRC-32 as zipfile would (``ValueError`` on a mismatch); ``None`` for any other layout
    (the caller then uses zipfile)."""
    mv = memoryview(data)
    out: dict[str, memoryview] = {}
    pos = 0
    while pos + 30 <= len(data) and data[pos:pos + 4] == _SIG:
        _, _, flag, method, _, _, crc, csize, usize, nlen, elen = _LOCAL.unpack_from(data, pos)
        if method != 0 or flag & 0x08:
            return None
        name = data[pos + 30:pos + 30 + nlen].decode("utf-8", "replace")
        extra = pos + 30 + nlen
        if csize == _FF or usize == _FF:  # zip64: the sizes are in the extra field
            e, end = extra, extra + elen
            while e + 4 <= end:
                hid, hlen = struct.unpack_from("<2H", data, e)
                if hid == 1 and hlen >= 16:
                    usize, csize = struct.unpack_from("<2Q", data, e + 4)
                    break
                e += 4 + hlen
            else:
                return None
        start = extra + elen
        if csize != usize or start + csize > len(data):
            return None
        body = mv[start:start + csize]
        if zlib.crc32(body) != crc:
            raise ValueError(f"member {name!r}: CRC-32 mismatch")
        out[name] = body
        pos = start + csize
    return out if out and data[pos:pos + 2] == b"PK" else None


def npy_info(body: memoryview) -> tuple[np.dtype, tuple[int, ...], int, bool, int] | None:
    """(dtype, shape, data bytes, canonical header, header length) of a version-1 ``.npy`` member
    whose data fills it exactly; ``None`` for anything else (the general reader decides). The
    header is canonical when it is the one ``npy_bytes`` writes for that dtype and shape: then
    the member IS ``npy_bytes`` of its array, and a shard stores it as it is."""
    if len(body) < 10 or body[6] != 1:
        return None
    hl = 10 + (body[8] | body[9] << 8)
    head = bytes(body[:hl])
    info = _NPY_INFO.get(head)
    if info is None:
        f = io.BytesIO(head)
        try:  # numpy's own header reader: a literal, never code
            np.lib.format.read_magic(f)
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        except Exception:
            return None
        if fortran or dtype.hasobject or any(int(x) < 0 for x in shape):
            return None
        shape = tuple(int(x) for x in shape)
        out = io.BytesIO()
        np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                   "fortran_order": False, "shape": shape})
        info = (dtype, shape, math.prod(shape) * dtype.itemsize, out.getvalue() == head)
        if len(_NPY_INFO) < 4096:
            _NPY_INFO[head] = info
    if len(body) != hl + info[2]:
        return None
    return (*info, hl)


def _member(data: bytes, mv: memoryview, pos: int, st: struct.Struct, name: bytes) -> tuple[memoryview, int] | None:
    """The CRC-checked body of the member at ``pos`` if it is ``name`` in numpy's zip64 form,
    and its end."""
    if pos + st.size > len(data):  # cut short inside a header: the general reader names the file
        return None
    sig, _, flag, method, _, _, crc, csize, usize, nlen, elen, nm, hid, hlen, u64, c64 = st.unpack_from(data, pos)
    if (sig != _SIG or method or flag & 0x08 or nm != name or nlen != len(name) or elen != 20 or hid != 1 or hlen != 16 or u64 != c64
            or csize != _FF or usize != _FF):
        return None
    start = pos + st.size
    end = start + c64
    if end > len(data):
        return None
    body = mv[start:end]
    if zlib.crc32(body) != crc:
        return None
    return body, end


def _walk(data: bytes) -> tuple[memoryview, Any, Any, Any, bytes, str] | None:
    """Every check of :func:`fast_parse` but the metadata's: the zip walk with each member's
    CRC-32, the ``.npy`` headers, and the arrays' sha256 (hex). Returns (mean member, std
    member, mean info, std info, stored metadata JSON, hex digest) or ``None``."""
    if len(data) < 3 * 57:
        return None
    mv = memoryview(data)
    m = _member(data, mv, 0, _Z8, b"mean.npy")
    if m is None:
        return None
    mean_b, pos = m
    m = _member(data, mv, pos, _Z8, b"meta.npy")
    if m is None:
        return None
    meta_b, pos = m
    std_b = None
    if data[pos + 30:pos + 37] == b"std.npy":
        m = _member(data, mv, pos, _Z7, b"std.npy")
        if m is None:
            return None
        std_b, pos = m
    if data[pos:pos + 2] != b"PK" or data[pos:pos + 4] == _SIG:  # the central directory next
        return None
    mi, ti = npy_info(mean_b), npy_info(meta_b)
    if mi is None or ti is None or not mi[3] or ti[0] != np.uint8 or len(ti[1]) != 1:
        return None
    si = None
    if std_b is not None:
        if len(std_b) == len(mean_b) and std_b[:mi[4]] == mean_b[:mi[4]]:
            si = mi  # the mean's header: parsed once
        else:
            si = npy_info(std_b)
            if si is None or not si[3]:
                return None
    key = (mi[0], mi[1])
    h = _DIGEST_PREFIX.get(key)
    if h is None:
        h = hashlib.sha256(dtype_name(mi[0]).encode())
        h.update(repr(mi[1]).encode())
        if len(_DIGEST_PREFIX) < 4096:
            _DIGEST_PREFIX[key] = h
    h = h.copy()
    h.update(mean_b[mi[4]:])
    if std_b is not None:
        h.update(std_b[si[4]:])  # type: ignore[index]
    return mean_b, std_b, mi, si, bytes(meta_b[ti[4]:]), h.hexdigest()


def _loads(raw: bytes) -> Any:
    """``json.loads`` of a stored metadata text as :func:`fast_parse` always read it (UTF-8);
    ``_BAD`` where that raises ValueError (the general reader then names the object)."""
    try:
        return json.loads(raw.decode())
    except ValueError:
        return _BAD


_BAD = object()
_SCAN = json.JSONDecoder().scan_once  # json.loads' own C scanner (json.loads = skip blanks, scan, check the end)


def _loads_many(raws: list[bytes]) -> list[Any]:
    """``[_loads(r) for r in raws]``, with one UTF-8 decode for all and json's scanner run at
    each text's start in the joined string, instead of one ``json.loads`` each (~3x less CPU).
    A text is taken from the joined scan only where ``json.loads`` provably gives the same
    object: it starts with ``{`` (no leading blank) and the scanned object ends exactly at its
    end (an object's extent is fixed by its own braces, so what follows cannot change it; the
    separator is a blank, and a valid UTF-8 join of ASCII-separated parts has valid parts).
    Anything else (non-ASCII text, trailing blanks, a parse error) is read by :func:`_loads`."""
    joined = b" ".join(raws)
    try:
        s = joined.decode()
    except UnicodeDecodeError:
        return [_loads(r) for r in raws]
    if len(s) != len(joined):  # non-ASCII: character offsets differ from byte offsets
        return [_loads(r) for r in raws]
    out: list[Any] = []
    pos = 0
    for r in raws:
        end = pos + len(r)
        obj: Any = _BAD
        if s.startswith("{", pos):
            try:
                obj, stop = _SCAN(s, pos)
            except (StopIteration, ValueError):  # JSONDecodeError, an int over 4,300 digits: _loads says which
                obj, stop = _BAD, -1
            if stop != end:
                obj = _BAD
        out.append(obj if obj is not _BAD else _loads(r))
        pos = end + 1
    return out


def _finish(w: tuple[memoryview, Any, Any, Any, bytes, str], meta: Any) -> FastStaged | None:
    mean_b, std_b, mi, si, raw, digest = w
    if type(meta) is not dict or meta.get("sha256") != digest:
        return None
    mean = np.frombuffer(mean_b[mi[4]:], mi[0]).reshape(mi[1])  # read-only views of the object's bytes
    std = np.frombuffer(std_b[si[4]:], si[0]).reshape(si[1]) if std_b is not None else None
    return mean, std, meta, mean_b, std_b, raw


def fast_parse(data: bytes) -> FastStaged | None:
    """One staging object in the exact layout latentds writes (``np.savez`` of C-ordered mean,
    meta, std, zip64 headers), checked as the general reader checks it: every member's CRC-32,
    and the sha256 of dtype, shape and array data against the one in its metadata. ``None``
    for anything else or any failed check (the general reader then raises by name). (Every
    CRC-32 is checked although the sha256 covers the arrays' bytes: a damaged CRC field alone
    is reported as corruption by the general reader, and so it is here.)"""
    w = _walk(data)
    if w is None:
        return None
    meta = _loads(w[4])
    return None if meta is _BAD else _finish(w, meta)


def fast_parse_many(datas: list[bytes]) -> list[FastStaged | None]:
    """``[fast_parse(d) for d in datas]`` (the same results, tested), with the metadata texts
    parsed together (:func:`_loads_many`): compaction reads staging objects in batches."""
    walks = [_walk(d) for d in datas]
    metas = iter(_loads_many([w[4] for w in walks if w is not None]))
    return [None if w is None else (None if (m := next(metas)) is _BAD else _finish(w, m)) for w in walks]


def canonical_metas(entries: list[Any]) -> list[bytes] | None:
    """The shard ``.json`` members of checked staging objects, when every stored metadata JSON
    already is ``canonical_json`` of what it parses to; ``None`` otherwise (then each is
    written anew). One encoder call for all of them: the canonical text of the list is
    ``[`` + the members joined by ``,`` + ``]``, and since each stored text parsed on its own
    as one JSON object (and canonical text has no whitespace outside strings), the joined
    texts can only be equal if every member is equal to its own canonical text."""
    raws = [getattr(e, "meta_raw", None) for e in entries]
    if not raws or any(r is None for r in raws):
        return None
    if _JSON([e.meta for e in entries]).encode() != b"[" + b",".join(raws) + b"]":  # type: ignore[arg-type]
        return None
    return raws  # type: ignore[return-value]
