"""Study folders: ``latentds review create`` and the manifest every other part reads.

Layout of a study folder (self-contained; copy it to the reading room as it is)::

    STUDY/study.json      manifest: codecs, Likert items, cases (opaque ids, class), trials
                          (opaque ids -> case + codec), image names + sha256; no paths, no tags
    STUDY/images/*.png    16-bit grayscale PNGs under random names (the name never says which
                          codec or whether it is the original)
    STUDY/access_token    per-study token, required when serving beyond 127.0.0.1 (mode 0600)
    STUDY/answers.sqlite  created by ``serve``: readers, their randomised order, answers

A *trial* is one (case, codec) pair: the original beside that codec's reconstruction. Each
reader rates every trial once, in an order and with the original on a side drawn per reader
at sign-in (recorded in the database).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LatentdsError

__all__ = ["FORMAT_VERSION", "ITEMS", "Study", "StudyError", "create_study", "load_study", "read_png16",
           "write_png16"]

FORMAT_VERSION = 1
MANIFEST = "study.json"
TOKEN_FILE = "access_token"
DB_FILE = "answers.sqlite"

# The paper's three 5-point Likert items. Every scale is oriented so that 5 is best (the
# reconstruction is indistinguishable / nothing diagnostic is lost / no artifacts), which keeps
# "higher is better" true for every column of the analysis and the plot.
ITEMS: dict[str, dict[str, Any]] = {
    "fidelity": {
        "title": "Image fidelity",
        "question": "How faithfully does the reconstruction reproduce the original?",
        "anchors": ["very poor", "poor", "fair", "good", "indistinguishable"],
    },
    "diagnostic": {
        "title": "Diagnostic losslessness",
        "question": "Is every diagnostic feature of the original (e.g. calcifications, fracture lines) preserved?",
        "anchors": ["lost", "mostly lost", "partly kept", "mostly kept", "fully kept"],
    },
    "artifacts": {
        "title": "Artifacts",
        "question": "Is the reconstruction free of artifacts (blurring, ringing, hallucinated structure)?",
        "anchors": ["severe", "marked", "moderate", "slight", "none"],
    },
}


class StudyError(LatentdsError):
    """A study folder is missing, incomplete or corrupt, or a ``review`` argument is invalid."""


@dataclass
class Study:
    """A loaded study folder."""

    root: Path
    manifest: dict[str, Any]

    @property
    def trials(self) -> dict[str, dict[str, Any]]:
        return self.manifest["trials"]

    @property
    def cases(self) -> dict[str, dict[str, Any]]:
        return self.manifest["cases"]

    @property
    def codecs(self) -> list[str]:
        return [c["name"] for c in self.manifest["codecs"]]

    @property
    def seed(self) -> int:
        return int(self.manifest["seed"])

    @property
    def readers(self) -> list[str] | None:
        r = self.manifest.get("readers")
        return list(r) if r else None

    @property
    def db_path(self) -> Path:
        return self.root / DB_FILE

    def token(self) -> str:
        p = self.root / TOKEN_FILE
        try:
            tok = p.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise StudyError(f"{p}: cannot read the study's access token ({exc}); re-create it with "
                             f"`python -c \"import secrets; print(secrets.token_urlsafe(24))\" > {p}`") from exc
        if len(tok) < 16:
            raise StudyError(f"{p}: the access token is shorter than 16 characters; write a longer random one")
        return tok

    def image_path(self, trial_id: str, which: str) -> tuple[Path, str]:
        """(path, expected sha256) of the ``original`` or ``reconstruction`` image of a trial."""
        t = self.trials[trial_id]
        entry = self.cases[t["case"]]["original"] if which == "original" else t["reconstruction"]
        return self.root / "images" / entry["file"], entry["sha256"]


def load_study(path: str | os.PathLike[str]) -> Study:
    """Open a study folder written by :func:`create_study`; raises :class:`StudyError`."""
    root = Path(path)
    mf = root / MANIFEST
    if not root.is_dir():
        raise StudyError(f"{root}: no such study folder; create one with `latentds review create {root} "
                         f"--source FOLDER --codec NAME`")
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise StudyError(f"{mf}: missing; {root} is not a study folder (create one with "
                         f"`latentds review create`)") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StudyError(f"{mf}: unreadable or corrupt ({exc}); restore it from a copy of the study") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != "latentds-review":
        raise StudyError(f"{mf}: not a latentds review manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise StudyError(f"{mf}: study format version {manifest.get('version')!r}; this latentds reads "
                         f"version {FORMAT_VERSION}")
    for k in ("cases", "trials", "codecs", "seed"):
        if k not in manifest:
            raise StudyError(f"{mf}: manifest lacks {k!r}; the file is incomplete")
    for tid, t in manifest["trials"].items():
        if t.get("case") not in manifest["cases"] or t.get("codec") not in [c["name"] for c in manifest["codecs"]]:
            raise StudyError(f"{mf}: trial {tid} names an unknown case or codec; the manifest is corrupt")
    return Study(root, manifest)


# ----------------------------------------------------------------------------- images


def write_png16(path: Path, img: np.ndarray) -> str:
    """Write a float image in [0, 1] as a 16-bit grayscale PNG; return the file's sha256."""
    from PIL import Image

    u16 = np.clip(np.rint(np.asarray(img, np.float64) * 65535.0), 0, 65535).astype("<u2")
    im = Image.fromarray(u16)  # uint16 -> mode "I;16", stored as a 16-bit grayscale PNG
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False)
    data = buf.getvalue()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()


def read_png16(path: Path, sha256: str | None = None) -> np.ndarray:
    """Read a study image back as ``uint16`` (H, W); checks the sha256 when given.

    Raises :class:`StudyError` naming the file (missing, checksum mismatch, undecodable)."""
    from PIL import Image

    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise StudyError(f"{path.name}: this image is missing from the study folder") from exc
    except OSError as exc:
        raise StudyError(f"{path.name}: this image cannot be read ({exc.strerror or exc})") from exc
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise StudyError(f"{path.name}: this image is corrupt (its checksum differs from the one recorded "
                         f"when the study was created)")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            arr = np.asarray(im)
    except Exception as exc:  # PIL raises many types for a damaged file
        raise StudyError(f"{path.name}: this image cannot be decoded ({type(exc).__name__})") from exc
    if arr.ndim != 2:
        raise StudyError(f"{path.name}: expected a grayscale image, got shape {arr.shape}")
    return arr.astype(np.uint16, copy=False)


# ----------------------------------------------------------------------------- create


def _pick_cases(targets: list[int], n: int, rng: np.random.Generator) -> list[tuple[list[int], int]]:
    """Per class, a random order of its samples and how many to take (proportional
    allocation, largest remainders, at least one per class when n allows)."""
    classes = sorted(set(targets))
    by_class = {c: [i for i, t in enumerate(targets) if t == c] for c in classes}
    total = len(targets)
    quota = {c: n * len(by_class[c]) / total for c in classes}
    take = {c: int(np.floor(quota[c])) for c in classes}
    for c in sorted(classes, key=lambda c: (-(quota[c] - take[c]), c)):
        if sum(take.values()) >= n:
            break
        take[c] += 1
    order = {c: list(rng.permutation(by_class[c])) for c in classes}
    return [([int(i) for i in order[c]], take[c]) for c in classes]


def _read_source(url: str, storage_options: dict[str, Any]) -> bytes:
    from .. import discovery

    if discovery.is_remote(url):
        import fsspec

        with fsspec.open(url, "rb", **storage_options) as fh:
            return fh.read()
    with open(discovery._local(url), "rb") as fh:
        return fh.read()


def create_study(
    study: str | os.PathLike[str],
    source: str | os.PathLike[str],
    codecs: list[str],
    *,
    n: int = 50,
    seed: int = 0,
    size: int | None = None,
    crop_roi: bool = True,
    readers: list[str] | None = None,
    key_file: str | os.PathLike[str] | None = None,
    storage_options: dict[str, Any] | None = None,
    device: str = "cpu",
    log=None,
    progress: bool = False,
) -> Study:
    """Write a study folder; see the module docstring for its layout.

    ``n`` cases are drawn (stratified by class when ``source`` has class folders); a case whose
    source cannot be read or preprocessed is reported on ``log`` and replaced by another of
    its class (``progress``: a progress bar on stderr). ``key_file`` (outside the study folder) receives the case -> source path map
    for the study owner; the study folder itself never holds a path."""
    import torch

    from ..codecs import create_codec
    from ..preprocess import Preprocess
    from ..sources import list_sources

    log = log or (lambda msg: print(msg, file=sys.stderr))
    root = Path(study)
    if not codecs:
        raise StudyError("review create: name at least one codec with --codec NAME")
    if len(set(codecs)) != len(codecs):
        raise StudyError(f"review create: codec listed twice in {codecs}; name each once")
    if n < 1:
        raise StudyError(f"review create: --n must be at least 1, got {n}")
    if root.exists() and any(root.iterdir()):
        raise StudyError(f"{root}: exists and is not empty; a study folder is written once (choose a new "
                         f"folder, or delete this one if no answers in it matter)")
    if key_file is not None:
        kf = Path(key_file).resolve()
        if root.resolve() in kf.parents:
            raise StudyError(f"{key_file}: the key file maps cases to source paths and must live outside "
                             f"the study folder {root}")
    if readers is not None:
        readers = [r.strip() for r in readers]
        if not readers or any(not _valid_name(r) for r in readers) or len(set(readers)) != len(readers):
            raise StudyError(f"review create: --reader names must be distinct, 1-64 characters, printable; "
                             f"got {readers}")
    try:
        sl = list_sources(source, storage_options=storage_options)
    except FileNotFoundError as exc:
        raise StudyError(f"{source}: no such source folder ({exc})") from exc
    if not sl.items:
        raise StudyError(f"{source}: no images found (DICOM, PNG, JPEG, TIFF ...)")
    if n > len(sl.items):
        raise StudyError(f"review create: --n {n} asks for more cases than {source} holds ({len(sl.items)})")

    built = []
    for name in codecs:
        try:
            c = create_codec(name).to(device)
        except LatentdsError:
            raise
        except Exception as exc:
            raise StudyError(f"--codec {name}: cannot be created ({type(exc).__name__}: {exc}); "
                             f"`latentds codecs -v` lists the codecs and their weights") from exc
        built.append(c)
    pre = Preprocess(crop_roi=crop_roi, size=size)
    rng = np.random.default_rng(seed)
    targets = [it.target for it in sl.items]

    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    used_names: set[str] = set()

    def fresh_name() -> str:  # random (not seeded) names: they must not encode the codec or case
        while True:
            nm = secrets.token_hex(8) + ".png"
            if nm not in used_names:
                used_names.add(nm)
                return nm

    pending: list[tuple[Any, np.ndarray, list[np.ndarray]]] = []  # (source item, original, reconstructions)
    plan = _pick_cases(targets, n, rng)
    failures = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="review create", unit="case")
    for order, want in plan:
        got = 0
        for idx in order:
            if got >= want:
                break
            item = sl.items[idx]
            try:
                img = pre(io.BytesIO(_read_source(item.url, dict(storage_options or {}))), name=item.rel)
            except LatentdsError as exc:
                failures += 1
                log(f"latentds review create: skipped a source that cannot be used ({exc}); drew another")
                continue
            except OSError as exc:
                failures += 1
                log(f"latentds review create: skipped {item.rel}: cannot be read ({exc}); drew another")
                continue
            got += 1
            recs = []
            x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
            for c in built:
                with torch.inference_mode():
                    mean, _ = c.encode_dist(x.to(c.device))  # the stored latent is the posterior mean
                    rec = c.decode(mean)[0, 0].float().cpu().numpy()
                recs.append(rec[: img.shape[0], : img.shape[1]])
            pending.append((item, img, recs))
            if bar is not None:
                bar.update(1)
        if got < want:
            raise StudyError(f"{source}: only {got} usable images in class "
                             f"{sl.classes[targets[order[0]]] if sl.classes else '(none)'} for the {want} "
                             f"cases asked for ({failures} unreadable sources so far); lower --n")

    if bar is not None:
        bar.close()
    # Case ids are assigned in a shuffled order, so "c01" says nothing about class or source order.
    cases: dict[str, dict[str, Any]] = {}
    trials: dict[str, dict[str, Any]] = {}
    key_rows: list[tuple[str, str]] = []
    perm = rng.permutation(len(pending))
    width = max(2, len(str(len(pending))))
    for k, j in enumerate(perm, start=1):
        item, img, recs = pending[int(j)]
        cid = f"c{k:0{width}d}"
        h, w = img.shape
        oname = fresh_name()
        osha = write_png16(root / "images" / oname, img)
        cases[cid] = {
            "label": sl.classes[item.target] if sl.classes and item.target >= 0 else None,
            "shape": [int(h), int(w)],
            "original": {"file": oname, "sha256": osha},
        }
        key_rows.append((cid, item.rel))
        for c, rec in zip(built, recs):
            rname = fresh_name()
            rsha = write_png16(root / "images" / rname, rec)
            trials[f"t{secrets.token_hex(6)}"] = {"case": cid, "codec": c.name,
                                                  "reconstruction": {"file": rname, "sha256": rsha}}
    # trial ids are random too; order them for a stable manifest
    trials = dict(sorted(trials.items()))
    manifest = {
        "format": "latentds-review",
        "version": FORMAT_VERSION,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seed": int(seed),
        "n_cases": len(cases),
        "classes": list(sl.classes),
        "preprocessing": pre.to_dict(),
        "codecs": [{"name": c.name, "f": int(c.f), "latent_channels": int(c.latent_channels),
                    "fingerprint": c.fingerprint} for c in built],
        "items": ITEMS,
        "readers": readers,
        "cases": cases,
        "trials": trials,
        "image_encoding": "16-bit grayscale PNG, value = round(65535 * preprocessed intensity in [0, 1])",
    }
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, root / MANIFEST)
    tok = root / TOKEN_FILE
    fd = os.open(tok, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(secrets.token_urlsafe(24) + "\n")
    if key_file is not None:
        import csv

        Path(key_file).parent.mkdir(parents=True, exist_ok=True)
        with open(key_file, "w", newline="", encoding="utf-8") as fh:
            wr = csv.writer(fh)
            wr.writerow(["case", "source"])
            wr.writerows(sorted(key_rows))
    return load_study(root)


def _valid_name(name: str) -> bool:
    return isinstance(name, str) and 1 <= len(name) <= 64 and name.isprintable() and name.strip() == name
