"""`latentds review create` and the rating server, without a browser: study folder contents
(no PHI, the project's preprocessing and decode), bad input, access control, durability."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flask")

from latentds.cli import main as latentds_main  # noqa: E402
from latentds.review.app import create_app, make_server  # noqa: E402
from latentds.review.db import AnswerDB  # noqa: E402
from latentds.review.study import StudyError, create_study, load_study, read_png16  # noqa: E402
from latentds.testing.synthetic import make_dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("src")
    make_dataset(root, n_per_class=4, shape=(128, 112))
    return root


@pytest.fixture(scope="module")
def study_dir(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("studies") / "s"
    create_study(out, source, ["bicubic-f8", "bicubic-f4"], n=4, seed=2,
                 key_file=out.parent / "key.csv", log=lambda m: None)
    return out


def _fresh(study_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the module's study (tests that write answers or damage images)."""
    import shutil

    dst = tmp_path / "study"
    shutil.copytree(study_dir, dst, ignore=shutil.ignore_patterns("answers.sqlite*"))
    return dst


def test_create_writes_a_blinded_phi_free_study(study_dir, source):
    import torch

    from latentds.codecs import create_codec
    from latentds.preprocess import Preprocess

    st = load_study(study_dir)
    assert len(st.cases) == 4 and len(st.trials) == 8 and st.codecs == ["bicubic-f8", "bicubic-f4"]
    assert sorted(c["label"] for c in st.cases.values()) == ["negative", "negative", "positive", "positive"]
    # no source path, file name, DICOM tag value or patient string anywhere in the folder
    blob = b"".join(p.read_bytes() for p in study_dir.rglob("*") if p.is_file())
    for needle in (str(source).encode(), b".dcm", b"s0000", b"SYNTHETIC", b"PHANTOM", b"PatientName",
                   b"bicubic-f8.png"):
        assert needle not in blob, needle
    names = [p.name for p in (study_dir / "images").iterdir()]
    assert len(names) == 4 + 8 and all(re.fullmatch(r"[0-9a-f]{16}\.png", n) for n in names)
    key = (study_dir.parent / "key.csv").read_text().splitlines()
    assert key[0] == "case,source" and len(key) == 5
    # images are the project's preprocessing and each codec's decode of its posterior mean, 16-bit
    case, rel = key[1].split(",")
    img = Preprocess()(source / rel)
    orig = read_png16(study_dir / "images" / st.cases[case]["original"]["file"], st.cases[case]["original"]["sha256"])
    assert orig.dtype == np.uint16 and orig.shape == img.shape
    assert np.abs(orig.astype(float) - img * 65535).max() <= 0.5 + 1e-6
    codec = create_codec("bicubic-f8")
    with torch.inference_mode():
        rec = codec.decode(codec.encode(torch.from_numpy(img)[None, None]))[0, 0, :img.shape[0], :img.shape[1]].numpy()
    tid = next(t for t, v in st.trials.items() if v["case"] == case and v["codec"] == "bicubic-f8")
    got = read_png16(*st.image_path(tid, "reconstruction"))
    assert np.abs(got.astype(float) - rec * 65535).max() <= 0.5 + 1e-3
    assert (study_dir / "access_token").stat().st_mode & 0o077 == 0


def test_create_skips_unreadable_sources_and_reports_them(tmp_path):
    from latentds.review.study import _pick_cases
    from latentds.sources import list_sources

    src = tmp_path / "src"
    make_dataset(src, n_per_class=3, shape=(96, 80))
    (src / "negative" / "broken.dcm").write_bytes(b"DICM" + b"\0" * 50)
    items = list_sources(src).items
    bad = next(i for i, it in enumerate(items) if it.rel.endswith("broken.dcm"))
    # a seed whose draw includes the broken file, so it must be skipped and replaced
    targets = [it.target for it in items]
    seed = next(s for s in range(100)
                if bad in (neg := _pick_cases(targets, 6, np.random.default_rng(s))[0])[0][:neg[1]])
    msgs: list[str] = []
    st = create_study(tmp_path / "st", src, ["bicubic-f4"], n=6, seed=seed, log=msgs.append)
    assert len(st.cases) == 6
    assert sorted(c["label"] for c in st.cases.values()) == ["negative"] * 3 + ["positive"] * 3
    assert len(msgs) == 1 and "broken.dcm" in msgs[0] and "drew another" in msgs[0]
    # a class without enough usable images is a clear error, not a smaller study
    (src / "positive" / "broken2.dcm").write_bytes(b"garbage")
    with pytest.raises(StudyError, match="usable images"):
        create_study(tmp_path / "st2", src, ["bicubic-f4"], n=8, seed=0, log=lambda m: None)


def test_create_errors_are_typed_one_line_exit_2(tmp_path, source, capsys):
    cases = [
        (["review", "create", str(tmp_path / "a"), "--source", str(source), "--codec", "no-such-codec", "--n", "2"],
         "no-such-codec"),
        (["review", "create", str(tmp_path / "b"), "--source", str(tmp_path / "missing"), "--codec", "bicubic-f8"],
         "missing"),
        (["review", "create", str(tmp_path / "c"), "--source", str(source), "--codec", "bicubic-f8", "--n", "99"],
         "more cases than"),
        (["review", "create", str(tmp_path / "d"), "--source", str(source), "--codec", "bicubic-f8", "--n", "2",
          "--key-file", str(tmp_path / "d" / "key.csv")], "outside the study folder"),
    ]
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "x").write_text("answers")
    cases.append((["review", "create", str(tmp_path / "e"), "--source", str(source), "--codec", "bicubic-f8"],
                  "not empty"))
    for argv, needle in cases:
        assert latentds_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("latentds: error: ") and err.count("\n") == 1 and needle in err, err
    assert (tmp_path / "e" / "x").read_text() == "answers"  # an existing study is never overwritten
    with pytest.raises(SystemExit):
        latentds_main(["review", "--help"])
    assert "create" in capsys.readouterr().out


def _signin(c, name="alice"):
    r = c.post("/api/signin", json={"name": name})
    assert r.status_code == 200, r.json
    return r.json, {"X-Review-Session": r.json["session"]}


def test_server_refuses_bad_requests_with_json_4xx(study_dir, tmp_path):
    st = load_study(_fresh(study_dir, tmp_path))
    c = create_app(st).test_client()
    s, h = _signin(c)
    t = s["trial"]
    ok = {"trial": t, "fidelity": 3, "diagnostic": 4, "artifacts": 5}
    bad = [
        ("post", "/api/answer", {"data": "{not json", "headers": {**h, "Content-Type": "application/json"}}, 400),
        ("post", "/api/answer", {"json": [1, 2], "headers": h}, 400),
        ("post", "/api/answer", {"json": {**ok, "fidelity": 6}, "headers": h}, 400),
        ("post", "/api/answer", {"json": {**ok, "fidelity": 0}, "headers": h}, 400),
        ("post", "/api/answer", {"json": {**ok, "fidelity": "3"}, "headers": h}, 400),
        ("post", "/api/answer", {"json": {**ok, "fidelity": True}, "headers": h}, 400),
        ("post", "/api/answer", {"json": {k: v for k, v in ok.items() if k != "artifacts"}, "headers": h}, 400),
        ("post", "/api/answer", {"json": {**ok, "comment": "x" * 5000}, "headers": h}, 400),
        ("post", "/api/answer", {"json": {**ok, "comment": "x" * 70000}, "headers": h}, 413),
        ("post", "/api/answer", {"json": {**ok, "seconds": -1}, "headers": h}, 400),
        ("post", "/api/answer", {"json": {**ok, "trial": "t-no-such-case"}, "headers": h}, 404),
        ("post", "/api/answer", {"json": {**ok, "trial": ["x"]}, "headers": h}, 404),
        ("post", "/api/answer", {"json": ok, "headers": {"X-Review-Session": "forged"}}, 403),
        ("post", "/api/answer", {"json": ok}, 401),
        ("get", "/api/answer", {"headers": h}, 405),
        ("get", f"/api/trial/{t}/image/codec", {"headers": h}, 404),
        ("get", "/api/trial/t-nope/image/original", {"headers": h}, 404),
        ("get", f"/api/trial/{t}/image/original", {"headers": {"X-Review-Session": "forged"}}, 403),
        ("get", "/static/../study.json", {}, 404),
        ("get", "/no/such/page", {}, 404),
        ("post", "/api/signin", {"json": {"name": ""}}, 400),
        ("post", "/api/signin", {"json": {"name": "x" * 65}}, 400),
        ("post", "/api/signin", {"json": {"name": 7}}, 400),
        ("post", "/api/problem", {"json": {"trial": t, "reason": 3}, "headers": h}, 400),
    ]
    for method, path, kw, status in bad:
        r = getattr(c, method)(path, **kw)
        assert r.status_code == status, (path, kw.get("json"), r.status_code, r.data[:200])
        assert r.is_json and r.json["error"] and b"Traceback" not in r.data
    # nothing of the above was recorded; the valid answer is
    assert AnswerDB(st.db_path).rows() == []
    r = c.post("/api/answer", json=ok, headers=h)
    assert r.status_code == 201 and r.json["answered"] == 1 and r.json["trial"] != t
    assert list(c.get("/api/study").json["items"]) == ["fidelity", "diagnostic", "artifacts"]  # the paper's order
    # no codec name, case id or file name reaches the page
    page = b"".join(c.get(p).data for p in ("/", "/static/app.js", "/api/study")) + json.dumps(s).encode()
    for leak in [b"bicubic", *(v["case"].encode() for v in st.trials.values())]:
        assert leak not in page


def test_closed_reader_list_refuses_unknown_reader(source, tmp_path):
    st = create_study(tmp_path / "st", source, ["bicubic-f8"], n=2, readers=["alice", "bob"], log=lambda m: None)
    c = create_app(st).test_client()
    r = c.post("/api/signin", json={"name": "mallory"})
    assert r.status_code == 403 and "unknown reader" in r.json["error"]
    assert c.post("/api/signin", json={"name": "bob"}).status_code == 200


def test_missing_or_corrupt_image_is_reported_and_study_goes_on(study_dir, tmp_path):
    st = load_study(_fresh(study_dir, tmp_path))
    c = create_app(st).test_client()
    s, h = _signin(c)
    t = s["trial"]
    p_orig, _ = st.image_path(t, "original")
    p_rec, _ = st.image_path(t, "reconstruction")
    p_orig.unlink()
    data = bytearray(p_rec.read_bytes())
    data[-20] ^= 0x55
    p_rec.write_bytes(bytes(data))
    r = c.get(f"/api/trial/{t}/image/original", headers=h)
    assert r.status_code == 422 and "missing from the study folder" in r.json["error"] and "skip" in r.json["error"]
    r = c.get(f"/api/trial/{t}/image/reconstruction", headers=h)
    assert r.status_code == 422 and "corrupt" in r.json["error"]
    r = c.post("/api/problem", json={"trial": t, "reason": "missing image"}, headers=h)
    assert r.status_code == 201 and r.json["skipped"] == 1 and r.json["trial"] not in (None, t)
    t2 = r.json["trial"]
    if st.trials[t2]["case"] != st.trials[t]["case"]:  # the other codec of that case shares the missing original
        r = c.get(f"/api/trial/{t2}/image/original", headers=h)
        assert r.status_code == 200 and int(r.headers["X-Image-Width"]) > 0
    assert AnswerDB(st.db_path).problem_rows()[0]["trial"] == t


def test_remote_access_needs_flag_and_token(study_dir, tmp_path):
    st = load_study(_fresh(study_dir, tmp_path))
    with pytest.raises(StudyError, match="--allow-remote"):
        make_server(st, "0.0.0.0", 0)
    local = create_app(st).test_client()
    r = local.get("/", headers={"Host": "attacker.example:8765"})  # DNS rebinding onto 127.0.0.1
    assert r.status_code == 400 and "127.0.0.1" in r.json["error"]

    c = create_app(st, allow_remote=True).test_client()
    assert c.get("/").status_code == 401
    assert c.post("/api/signin", json={"name": "alice"}).status_code == 401
    assert c.get("/?token=wrong-token-wrong-token").status_code == 401
    r = c.get(f"/?token={st.token()}")
    assert r.status_code == 302 and r.headers["Location"] == "/"
    assert "HttpOnly" in r.headers["Set-Cookie"] and "SameSite=Strict" in r.headers["Set-Cookie"]
    assert c.get("/").status_code == 200  # the cookie now carries the token
    assert c.post("/api/signin", json={"name": "alice"}).status_code == 200
    other = create_app(st, allow_remote=True).test_client()
    assert other.post("/api/signin", json={"name": "bob"}, headers={"X-Review-Token": st.token()}).status_code == 200


def _http(url, body=None, headers=None):
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=20) as r:
        return json.loads(r.read())


def _start_server(root: Path):
    proc = subprocess.Popen([sys.executable, "-m", "latentds", "review", "serve", str(root), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        m = re.search(r"open (http://127\.0\.0\.1:\d+/)", line)
        if m:
            return proc, m.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"server did not start: {proc.stderr.read()}")


def test_answers_survive_a_killed_server_and_readers_resume(study_dir, tmp_path):
    root = _fresh(study_dir, tmp_path)
    proc, url = _start_server(root)
    try:
        s = _http(url + "api/signin", {"name": "alice"})
        h = {"X-Review-Session": s["session"]}
        order = [s["trial"]]
        st = s
        for k in range(3):
            st = _http(url + "api/answer", {"trial": st["trial"], "fidelity": k + 1, "diagnostic": 2, "artifacts": 3},
                       headers=h)
            order.append(st["trial"])
    finally:
        proc.send_signal(signal.SIGKILL)  # no clean shutdown
        proc.wait(timeout=20)
        proc.stdout.close()
        proc.stderr.close()
    rows = AnswerDB(root / "answers.sqlite").rows()
    assert [(r["trial"], r["fidelity"]) for r in rows] == [(order[k], k + 1) for k in range(3)]
    proc, url = _start_server(root)
    try:
        again = _http(url + "api/signin", {"name": "alice"})  # signing in again resumes
        assert again["answered"] == 3 and again["trial"] == order[3] and again["position"] == 4
        assert again["session"] == s["session"]
        bob = _http(url + "api/signin", {"name": "bob"})
        assert bob["answered"] == 0 and bob["total"] == 8
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        proc.stdout.close()
        proc.stderr.close()
    # orders and sides are recorded per reader and differ between readers
    with AnswerDB(root / "answers.sqlite").connect() as con:
        a = con.execute("SELECT trial, original_side FROM assignments WHERE reader_id = 1 ORDER BY position").fetchall()
        b = con.execute("SELECT trial, original_side FROM assignments WHERE reader_id = 2 ORDER BY position").fetchall()
    assert sorted(x[0] for x in a) == sorted(x[0] for x in b) == sorted(load_study(root).trials)
    assert [tuple(x) for x in a] != [tuple(x) for x in b]
    assert os.path.getsize(root / "answers.sqlite") > 0


def test_create_from_an_s3_source_matches_the_local_one(source, study_dir, s3_env, tmp_path, capsys):
    import s3fs

    bucket = s3_env.new_bucket()
    opts = s3_env.options()
    fs = s3fs.S3FileSystem(**opts, skip_instance_cache=True)
    for f in sorted(source.rglob("*.dcm")):
        fs.put_file(str(f), f"{bucket}/src/{f.parent.name}/{f.name}")
    argv = ["review", "create", str(tmp_path / "s3study"), "--source", f"s3://{bucket}/src", "--codec", "bicubic-f8",
            "--codec", "bicubic-f4", "--n", "4", "--seed", "2", "--storage-options", json.dumps(opts)]
    assert latentds_main(argv) == 0, capsys.readouterr().err
    remote, local = load_study(tmp_path / "s3study"), load_study(study_dir)
    # same sorted source list and seed -> the same cases, rendered to the same bytes
    assert sorted(c["original"]["sha256"] for c in remote.cases.values()) == \
        sorted(c["original"]["sha256"] for c in local.cases.values())
    assert sorted(t["reconstruction"]["sha256"] for t in remote.trials.values()) == \
        sorted(t["reconstruction"]["sha256"] for t in local.trials.values())
    assert bucket.encode() not in b"".join(p.read_bytes() for p in (tmp_path / "s3study").rglob("*") if p.is_file())


def test_damaged_answers_database_is_a_clear_error(study_dir, tmp_path, capsys):
    root = _fresh(study_dir, tmp_path)
    (root / "answers.sqlite").write_bytes(b"not a database " * 20)
    with pytest.raises(StudyError, match="cannot open the answers database"):
        create_app(load_study(root))
    assert latentds_main(["review", "analyze", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "answers.sqlite" in err and "never deleted" in err
    assert (root / "answers.sqlite").read_bytes().startswith(b"not a database")  # left as it was
