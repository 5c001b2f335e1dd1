"""Install the six codecs written by :mod:`latentds.train.vae.train_six` as latentds' shipped
defaults (``latentds/weights/kl-f{f}c{C}.safetensors`` + model card ``.json``).

    python -m latentds.train.vae.install_six --from OUT [--table benchmarks/results/codec_table.json]

Checks each file (loads through create_codec, residual-s2d, the right f and C), the total
size (≤ 40 MB), copies it, and writes the model card: sha256 of the file, the card (GPU /
CPU) and seconds it was trained on, steps, objective, data, validation numbers and α, and
-- with ``--table`` -- the held-out numbers of ``benchmarks/codec_table.py`` (run it after
a first install, then install again with the table: the weights do not change).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import shutil
import sys
from pathlib import Path

__all__ = ["install", "main"]

NAMES = ["kl-f4c1", "kl-f4c4", "kl-f8c1", "kl-f8c4", "kl-f16c1", "kl-f16c16"]
MAX_TOTAL_BYTES = 40_000_000


def _run_of(log: dict, name: str) -> dict | None:
    """The entry of the train log's ``runs`` list that trained ``name`` (a log merged from
    several device runs lists which codecs each run produced), or None."""
    for run in log.get("runs") or []:
        if name in run.get("codecs", []):
            return run
    return None


def install(
    src: str | Path,
    *,
    table: str | Path | None = None,
    dest: str | Path | None = None,
    only: list[str] | None = None,
    allow_worse: bool = False,
) -> list[Path]:
    """Copy the codecs named in ``only`` (default: all six) from ``src`` to ``dest``.

    With ``table``, a codec whose held-out row is worse than its s2d baseline on any
    measure is refused (issue 13: a shipped codec is never worse than s2d) unless
    ``allow_worse``; codecs not in ``only`` keep whatever is installed now."""
    from latentds.codecs import create_codec
    from latentds.codecs.kl import ResidualKLCodec
    from latentds.codecs.weights import PACKAGED_WEIGHTS_DIR

    src = Path(src)
    dest = Path(dest) if dest else PACKAGED_WEIGHTS_DIR
    names = list(only) if only else list(NAMES)
    bad = sorted(set(names) - set(NAMES))
    if bad:
        raise SystemExit(f"--only: unknown codec(s) {bad}; choose from {NAMES}")
    log = json.loads((src / "train_log.json").read_text())
    rows = {}
    if table:
        rows = {r["name"]: r for r in json.loads(Path(table).read_text())["rows"]}
    # The budget counts the six files that will be installed: new ones from src, the rest as kept in dest.
    total = sum(((src if n in names else dest) / f"{n}.safetensors").stat().st_size for n in NAMES)
    if total > MAX_TOTAL_BYTES:
        raise SystemExit(f"{src}: the six weight files hold {total} bytes, over the {MAX_TOTAL_BYTES} budget")
    written = []
    if rows and not allow_worse:
        worse = {n: rows[n]["margin_vs_s2d"] for n in names if n in rows and not rows[n]["never_worse_than_s2d"]}
        if worse:
            raise SystemExit(
                f"{table}: {sorted(worse)} are worse than their s2d baseline on a held-out measure ({worse}); "
                "leave them out with --only, or pass --allow-worse to install them anyway"
            )
    for name in names:
        w = src / f"{name}.safetensors"
        codec = create_codec(str(w))
        f, c = int(name[4:name.index("c", 4)]), int(name[name.index("c", 4) + 1:])
        if not isinstance(codec, ResidualKLCodec) or codec.name != name or (codec.f, codec.latent_channels) != (f, c):
            raise SystemExit(f"{w}: expected a residual-s2d {name} codec, got {codec!r}")
        card_in = json.loads((src / f"{name}.json").read_text())
        shutil.copyfile(w, dest / f"{name}.safetensors")
        sha = hashlib.sha256((dest / f"{name}.safetensors").read_bytes()).hexdigest()
        card = {
            "name": name,
            "sha256": sha,
            "summary": (
                f"Residual-s2d KL autoencoder: the free s2d-f{f}c{c} baseline plus a learned correction scaled by "
                f"alpha={codec.alpha:g} (alpha=0 is exactly s2d; alpha chosen on validation data so that the codec is "
                f"never worse than s2d there). Trained on {card_in.get('trained_on')} for {card_in.get('train_seconds')} s "
                f"({card_in.get('steps')} steps) on SYNTHETIC phantoms plus public pydicom-data test images. "
                "NOT a clinical model. Train your own with `latentds train-vae` (model.arch_kind: residual-s2d) for real work."
            ),
            "architecture": {"kind": "residual-s2d", "base": f"s2d-f{f}c{c}", "alpha": codec.alpha,
                             "params": card_in.get("params"), "autoencoder_config": card_in.get("config"),
                             "tensor_dtype": card_in.get("tensor_dtype")},
            "training": {
                "script": "latentds/train/vae/train_six.py (data: latentds/train/vae/prepare_six_data.py)",
                "card": card_in.get("trained_on"), "train_seconds": card_in.get("train_seconds"),
                "steps": card_in.get("steps"), "batch": card_in.get("batch"), "crop": card_in.get("crop"),
                "objective": card_in.get("objective"), "optimizer": card_in.get("optimizer"),
                "data": card_in.get("data"), "held_out": card_in.get("held_out"),
                "run_wall_seconds": (_run_of(log, name) or {}).get("wall_seconds", log.get("wall_seconds")),
                "run_budget_s": (_run_of(log, name) or {}).get("budget_s", log.get("budget_s")),
                "run_note": (_run_of(log, name) or {}).get("note"),
                # The log's args belong to the run whose codecs it lists (a merged log keeps one).
                "run_args": log.get("args") if name in {c.get("name") for c in log.get("codecs", [])} else None,
                "installed": _dt.date.today().isoformat(),
            },
            "validation": card_in.get("validation"),
            "alpha_rule": card_in.get("alpha_rule"),
        }
        if name in rows:
            r = rows[name]
            card["evaluation"] = {
                "source": "benchmarks/codec_table.py (held out: pydicom-data RG3_UNCR.dcm at 512 px; "
                          "SYNTHETIC phantoms seeds 10000+)",
                "kl": r["kl"], "s2d": r["s2d"], "bicubic": r["bicubic"], "margin_vs_s2d": r["margin_vs_s2d"],
                "never_worse_than_s2d": r["never_worse_than_s2d"],
            }
        (dest / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
        written += [dest / f"{name}.safetensors", dest / f"{name}.json"]
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--from", dest="src", required=True, help="train_six.py output folder")
    p.add_argument("--table", default=None, help="benchmarks/codec_table.py --json output, for the held-out numbers")
    p.add_argument("--dest", default=None, help="default: latentds/weights")
    p.add_argument("--only", default=None, help="comma-separated subset of the six names (the others stay as installed)")
    p.add_argument("--allow-worse", action="store_true", help="install codecs the table shows worse than s2d")
    a = p.parse_args(argv)
    only = [n.strip() for n in a.only.split(",") if n.strip()] if a.only else None
    for path in install(a.src, table=a.table, dest=a.dest, only=only, allow_worse=a.allow_worse):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
