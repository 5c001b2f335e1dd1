"""Keyed identities (latentds.identity): nothing a cache reader can test a guess against.

Issue 11, item 7: an unsalted sha256 prefix of a relative path was brute forced; a file's sha256
is a membership test; an OSError's repr(path) leaked a patient's name through a failure record.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from latentds.errors import ConfigError, DicomError
from latentds.identity import ENV, OPTION, Identities, IdentityKey, content_matches, resolve, stored_reason

KEY = "0123456789abcdef0123456789abcdef"
ROOT = "/data/trees/train"


def test_key_comes_from_the_option_then_the_environment_and_leaves_the_options(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    key, opts = resolve({"anon": False, OPTION: KEY})
    assert key is not None and opts == {"anon": False}  # fsspec never sees the key
    assert resolve({})[0] is None
    monkeypatch.setenv(ENV, KEY)
    env_key, _ = resolve({})
    assert env_key is not None and env_key.check == key.check
    assert KEY not in repr(key) and KEY not in repr(Identities(key).__dict__)


def test_short_keys_are_refused_with_how_to_make_one():
    with pytest.raises(ConfigError, match="secrets.token_hex"):
        IdentityKey(b"hunter2")


def test_keyed_failure_names_cannot_be_brute_forced_without_the_key():
    rel = "benign/MRN0042117.dcm"
    name = Identities(IdentityKey(KEY.encode())).failure_name(ROOT, rel, "k" * 64)
    # the old name: an unsalted sha256 prefix of the relative path, found by trying MRNs
    guesses = {hashlib.sha256(f"benign/MRN{n:07d}.dcm".encode()).hexdigest()[:16] for n in range(42000, 42200)}
    assert hashlib.sha256(rel.encode()).hexdigest()[:16] in guesses
    assert name[:16] not in guesses and name[1:17] not in guesses
    other = Identities(IdentityKey(b"another key, also long enough")).failure_name(ROOT, rel, "k" * 64)
    assert other != name


def test_failure_names_of_two_trees_sharing_a_cache_differ():
    ids = Identities(IdentityKey(KEY.encode()))
    assert ids.failure_name("/data/train", "benign/x.dcm", "a" * 64) != ids.failure_name("/data/val", "benign/x.dcm",
                                                                                         "a" * 64)
    # without a key the name is the sample key, which holds the tree's identity already
    plain = Identities(None)
    assert plain.failure_name("/data/train", "benign/x.dcm", "a" * 64) == "a" * 32
    assert plain.tag == "none" and Identities(IdentityKey(KEY.encode())).tag.startswith("hmac-sha256/")


def test_content_identity_is_keyed_or_absent_and_old_plain_hashes_still_compare():
    digest = hashlib.sha256(b"pixels").hexdigest()
    key = IdentityKey(KEY.encode())
    stored = Identities(key).content_id(digest)
    assert digest not in stored and stored.startswith("hmac-sha256:")
    assert content_matches(stored, digest, key) is True
    assert content_matches(stored, hashlib.sha256(b"other").hexdigest(), key) is False
    assert content_matches(stored, digest, None) is None  # cannot tell: not "stale"
    assert content_matches(stored, digest, IdentityKey(b"a different key of 32 bytes....")) is None
    assert Identities(None).content_id(digest) == "" and content_matches("", digest, key) is None
    assert content_matches(digest, digest, None) is True  # a cache written before: no key needed
    assert Identities(None).path_id(ROOT, "x.dcm") is None and len(Identities(key).path_id(ROOT, "x.dcm")) == 32


@pytest.mark.parametrize("name", ["Doe\tJane 1961.dcm", "Doe\nJane.dcm", "Müller, Anna.dcm"])
def test_an_oserror_never_lends_its_file_name_to_the_stored_reason(tmp_path, name):
    path = str(tmp_path / "benign" / name)
    try:
        open(path, "rb")
    except OSError as exc:
        err = exc
    assert repr(path)[1:-1] in str(err) or path in str(err)  # what leaked before
    reason = stored_reason(err, path, "benign/" + name)
    assert reason == "[Errno 2] No such file or directory"
    wrapped = DicomError(f"{path}: cannot read")
    wrapped.__cause__ = err
    assert stored_reason(wrapped, path, "benign/" + name) == "DicomError: [Errno 2] No such file or directory"


def test_a_message_that_quotes_the_path_is_withheld_not_edited(tmp_path):
    path = str(tmp_path / "Doe\tJane.dcm")
    # the project's error style: the leading "<file>: " is structure and is dropped
    assert stored_reason(DicomError(f"{path}: pixel data is constant"), path) == "pixel data is constant"
    quoted = stored_reason(ValueError(f"cannot parse {path!r} (bad tag)"), path)
    assert "Doe" not in quoted and "Jane" not in quoted and quoted.startswith("ValueError")


def _item(root: str, rel: str):
    from latentds.sources import SourceItem

    return SourceItem(f"{root}/{rel}", rel, 0, (("mtime_ns", 1), ("path", rel), ("root", root), ("size", 10)))


@pytest.mark.parametrize("keyed", [True, False])
def test_failure_records_hold_no_path_hash_and_trees_never_share_one(tmp_path, keyed):
    from latentds.bulk import read_failures
    from latentds.failures import FailureBook
    from latentds.store import open_store

    store = open_store(str(tmp_path / "cache"), "ns")
    ids = Identities(IdentityKey(KEY.encode()) if keyed else None)
    train, val = _item("/data/train", "benign/Doe Jane.dcm"), _item("/data/val", "benign/Doe Jane.dcm")
    book = FailureBook(store, ids, [train, val], {})
    book.record(train, "DicomError", "bad tag", "/data/train/benign/Doe Jane.dcm: bad tag")
    book.record(val, "DicomError", "bad tag", "/data/val/benign/Doe Jane.dcm: bad tag")
    recs = read_failures(store.location)
    assert len(recs) == 2 and book.name(train) != book.name(val)  # one record per tree
    old = hashlib.sha256(train.rel.encode()).hexdigest()[:16]
    assert old not in recs and not any(old in json.dumps(r) for r in recs.values())
    assert all(r["identity"] == ids.tag for r in recs.values())
    assert "Doe" not in json.dumps(recs)
    # the report (not the cache) keeps the real paths
    assert [it.url for it, _ in book.outstanding()] == [train.url, val.url]
    book.clear(train)
    assert set(read_failures(store.location)) == {book.name(val)}


def test_a_record_written_before_keyed_names_is_found_and_replaced(tmp_path):
    from latentds.bulk import read_failures
    from latentds.failures import FailureBook
    from latentds.store import open_store

    store = open_store(str(tmp_path / "cache"), "ns")
    it = _item("/data/train", "benign/x.dcm")
    store.record_failure(it.relpath_hash, "DicomError", "bad tag")  # as the previous version named it
    book = FailureBook(store, Identities(IdentityKey(KEY.encode())), [it], read_failures(store.location))
    assert book.failed(it)  # --retry-failed still finds it
    book.record(it, "DicomError", "bad tag", "bad tag")
    assert set(read_failures(store.location)) == {book.name(it)}  # the old name is gone


def test_without_a_key_the_record_of_a_file_fixed_since_is_swept(tmp_path):
    from latentds.bulk import read_failures
    from latentds.failures import FailureBook
    from latentds.sources import SourceItem
    from latentds.store import open_store

    store = open_store(str(tmp_path / "cache"), "ns")
    ids = Identities(None)
    bad = _item("/data/train", "benign/x.dcm")
    good = _item("/data/train", "benign/y.dcm")
    FailureBook(store, ids, [bad, good], {}).record(bad, "DicomError", "truncated", "truncated")
    fixed = SourceItem(bad.url, bad.rel, 0, (("mtime_ns", 2), ("path", bad.rel), ("root", "/data/train"),
                                             ("size", 20)))  # rewritten: a new size and mtime, a new key
    book = FailureBook(store, ids, [fixed, good], read_failures(store.location))
    assert not book.failed(fixed) and book.unmatched  # its name followed the old key
    other_tree = {"keys": ["not-this-jobs-key"], "failed": [ids.failure_name("", "", bad.key)]}
    assert book.sweep([other_tree], {fixed.key, good.key}) == []  # another tree's partition: left alone
    ours = {"keys": [good.key], "failed": [ids.failure_name("", "", bad.key)]}
    assert book.sweep([ours], {fixed.key, good.key}) == [ids.failure_name("", "", bad.key)]
    assert read_failures(store.location) == {}
