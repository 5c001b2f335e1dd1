"""The rating web app (Flask): one bundled page plus a small JSON API.

Readers are blinded to the codec: the page sees opaque trial ids and two images labelled
"Original" and "Reconstruction", on the side drawn for this reader and trial. Codec names,
case labels and file names never leave the server.

Security model: by default the server binds 127.0.0.1 and refuses requests whose ``Host`` is
not a loopback name (a web page elsewhere cannot reach it by DNS rebinding). Serving on any
other address needs ``allow_remote=True`` and then every request must carry the study's
access token (``?token=`` once, then a SameSite=Strict cookie). Readers are identified by a
per-reader session key issued at sign-in; an answer from an unknown session, or for a trial
that is not in this reader's list, is refused.
"""

from __future__ import annotations

import hmac
import sys
import threading
import traceback
from importlib import resources
from typing import Any

from .db import AnswerDB
from .study import ITEMS, Study, StudyError, _valid_name, read_png16

__all__ = ["create_app", "make_server"]

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
TOKEN_COOKIE = "latentds_review_token"
MAX_COMMENT = 2000


class _ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _static_dir() -> str:
    return str(resources.files("latentds.review") / "static")


def create_app(study: Study, *, allow_remote: bool = False) -> Any:
    """The Flask app serving ``study``. ``allow_remote``: require the study's access token on
    every request (set it whenever the server listens beyond the loopback interface)."""
    from flask import Flask, Response, jsonify, redirect, request, send_from_directory
    from werkzeug.exceptions import HTTPException

    db = AnswerDB(study.db_path)
    token = study.token() if allow_remote else None
    trial_ids = sorted(study.trials)
    allowed_readers = set(study.readers) if study.readers else None

    app = Flask("latentds.review", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024  # an answer is a few hundred bytes
    app.json.sort_keys = False  # keep the Likert items in the paper's order on the page

    def fail(status: int, message: str) -> _ApiError:
        return _ApiError(status, message)

    @app.errorhandler(_ApiError)
    def _api_error(exc: _ApiError):
        return jsonify(error=exc.message), exc.status

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):  # 404 / 405 / 413 / bad JSON: JSON, never an HTML traceback
        return jsonify(error=f"{exc.code} {exc.name}: {exc.description}"), exc.code

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):  # logged on the server; the reader gets a one-line message
        traceback.print_exception(exc, file=sys.stderr)
        return jsonify(error="internal error in the review server; this request was not recorded. "
                             "Tell the study owner (the server's terminal shows the details)."), 500

    @app.before_request
    def _guard():
        host = (request.host or "").rsplit(":", 1)[0] if not (request.host or "").startswith("[") \
            else (request.host or "").split("]")[0] + "]"
        if token is None:
            if host not in LOOPBACK_HOSTS:
                raise fail(400, f"this review server only answers on 127.0.0.1 (Host {request.host!r} refused); "
                                f"serve with --host ADDRESS --allow-remote to share it")
            return None
        given = request.args.get("token") or request.headers.get("X-Review-Token") or request.cookies.get(TOKEN_COOKIE)
        if not given or not hmac.compare_digest(given.encode(), token.encode()):
            raise fail(401, "this study needs its access token: open the link printed by `latentds review serve` "
                            "(it ends in ?token=...)")
        if request.args.get("token") and request.method == "GET" and not request.path.startswith("/api/"):
            resp = redirect(request.path)  # keep the token out of the address bar and history
            resp.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict")
            return resp
        return None

    def body() -> dict[str, Any]:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            raise fail(400, "expected a JSON object body with Content-Type: application/json")
        return data

    def reader() -> dict[str, Any]:
        session = request.headers.get("X-Review-Session", "")
        if not session:
            raise fail(401, "not signed in: sign in with your name first")
        r = db.reader_by_session(session)
        if r is None:
            raise fail(403, "unknown reader: this session is not registered in this study; sign in again")
        return r

    def assigned(r: dict[str, Any], trial: Any) -> dict[str, Any]:
        if not isinstance(trial, str) or trial not in study.trials:
            raise fail(404, f"unknown case {str(trial)[:40]!r}: not part of this study")
        a = db.assignment(r["id"], trial)
        if a is None:
            raise fail(403, f"case {trial} is not in {r['name']}'s list")
        return a

    def state(r: dict[str, Any]) -> dict[str, Any]:
        p = db.progress(r["id"])
        nxt = p.pop("next")
        return {"reader": r["name"], **p, "done": nxt is None,
                "trial": nxt["trial"] if nxt else None,
                "position": nxt["position"] + 1 if nxt else None,
                "original_side": nxt["original_side"] if nxt else None}

    @app.get("/")
    def index():
        return send_from_directory(_static_dir(), "index.html", max_age=0)

    @app.get("/static/<path:name>")
    def static_file(name: str):
        return send_from_directory(_static_dir(), name, max_age=0)

    @app.get("/api/study")
    def study_info():
        return jsonify(items=ITEMS, n_trials=len(trial_ids), closed_reader_list=allowed_readers is not None)

    @app.post("/api/signin")
    def signin():
        name = body().get("name")
        if not isinstance(name, str) or not _valid_name(name.strip()):
            raise fail(400, "a reader name is 1-64 printable characters")
        name = name.strip()
        if allowed_readers is not None and name not in allowed_readers:
            raise fail(403, f"unknown reader {name!r}: this study is for the readers named when it was created")
        r = db.sign_in(name, trial_ids, study.seed)
        return jsonify(session=r["session"], **state(r))

    @app.get("/api/state")
    def get_state():
        return jsonify(state(reader()))

    @app.get("/api/trial/<trial>/image/<which>")
    def image(trial: str, which: str):
        r = reader()
        assigned(r, trial)
        if which not in ("original", "reconstruction"):
            raise fail(404, "image must be 'original' or 'reconstruction'")
        path, sha = study.image_path(trial, which)
        try:
            arr = read_png16(path, sha)
        except StudyError as exc:
            raise fail(422, f"The {which} image of this case cannot be shown: {exc}. "
                            f"Tell the study owner, and skip this case to go on.") from None
        resp = Response(arr.astype("<u2", copy=False).tobytes(), mimetype="application/octet-stream")
        resp.headers["X-Image-Height"], resp.headers["X-Image-Width"] = str(arr.shape[0]), str(arr.shape[1])
        resp.headers["Cache-Control"] = "no-store"
        return resp

    @app.post("/api/answer")
    def answer():
        r = reader()
        data = body()
        assigned(r, data.get("trial"))
        ratings = {}
        for k in ITEMS:
            v = data.get(k)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 5:
                raise fail(400, f"{k} must be an integer rating from 1 to 5, got {v!r}")
            ratings[k] = v
        comment = data.get("comment", "")
        if not isinstance(comment, str) or len(comment) > MAX_COMMENT:
            raise fail(400, f"comment must be text of at most {MAX_COMMENT} characters")
        seconds = data.get("seconds")
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                    or not 0 <= seconds < 864000):
            raise fail(400, "seconds must be a non-negative number")
        db.answer(r["id"], data["trial"], ratings, comment, None if seconds is None else float(seconds))
        return jsonify(saved=True, **state(r)), 201

    @app.post("/api/problem")
    def problem():
        r = reader()
        data = body()
        assigned(r, data.get("trial"))
        reason = data.get("reason", "")
        if not isinstance(reason, str) or len(reason) > MAX_COMMENT:
            raise fail(400, f"reason must be text of at most {MAX_COMMENT} characters")
        db.problem(r["id"], data["trial"], reason)
        return jsonify(saved=True, **state(r)), 201

    return app


def make_server(study: Study, host: str = "127.0.0.1", port: int = 0, *, allow_remote: bool = False):
    """A threaded WSGI server for ``study`` (not started); ``server.port`` is the bound port.

    Any host other than a loopback address requires ``allow_remote`` (then the access token
    is required on every request)."""
    from werkzeug.serving import make_server as _make

    if host not in LOOPBACK_HOSTS and not allow_remote:
        raise StudyError(f"--host {host}: serving beyond this machine exposes the study to the network; "
                         f"add --allow-remote (readers then need the study's access token), or use 127.0.0.1")
    app = create_app(study, allow_remote=allow_remote or host not in LOOPBACK_HOSTS)
    try:
        return _make(host, port, app, threaded=True)
    except OSError as exc:
        raise StudyError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port") from exc


def serve_in_thread(study: Study, host: str = "127.0.0.1", port: int = 0, **kw: Any):
    """Start a server on a daemon thread (tests, notebooks); returns ``(server, url)``;
    stop it with ``server.shutdown()``."""
    srv = make_server(study, host, port, **kw)
    threading.Thread(target=srv.serve_forever, daemon=True, name="latentds-review").start()
    return srv, f"http://{host}:{srv.port}/"
