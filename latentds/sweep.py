"""The FLOPs-versus-AUROC sweep (the paper's Table 1 trade-off) on a task, shared by
``latentds sweep`` and ``benchmarks/tradeoff.py``.

For each method -- full size, bicubic f=4/8/16, every ``kl-f*c*`` codec whose weights are
present, and the SD VAE / MedVAE codecs when their weights are present locally -- it encodes
the task's images (a ``LatentDataset`` per codec), trains the same probe
(:func:`trainers.probe.fit_probe`) on the latents, scores AUROC with a bootstrap CI on a
held-out split and writes ``tradeoff.md``, ``tradeoff.csv`` and ``tradeoff.png`` (AUROC
against GFLOPs, log x, one line per method).

Default task: the SYNTHETIC fine-grained task of :mod:`latentds.synthetic` (phantoms with
or without clusters of 1-3 px calcifications) at a reduced configuration for a 2-core CPU
(:data:`REDUCED`); ``paper=True`` / ``--paper`` switches to the paper's probe (hrnet_w64,
1024², batch 128, AdamW 1e-4, 100 epochs; :data:`PAPER`), which needs a GPU.

GFLOPs are GMACs as the paper counts them (:func:`latentds.flops.gmacs`): ``gmacs`` is the
backbone actually used at the input actually used, ``paper_gmacs`` is ``hrnet_w64`` at
1024/f (Table 1's FLOPS column) for reference.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

FULL = "full size"
BICUBIC = ("bicubic-f4", "bicubic-f8", "bicubic-f16")


@dataclass
class SweepConfig:
    """What a sweep runs. The defaults are the reduced CPU configuration (:data:`REDUCED`)."""

    workdir: str = "latentds-sweep"          # synthetic data + latent caches
    out: str = "benchmarks/results"          # tradeoff.md / .csv / .png
    kind: str = "calcification"              # synthetic finding: calcification | fracture
    data_root: str | None = None             # an ImageFolder-style task instead of the synthetic one
    n_per_class: int = 128
    shape: tuple[int, int] = (192, 160)      # image (H, W) fed to the full-size row and to the codecs
    test_fraction: float = 0.5
    backbone: str = "small-cnn"              # any timm name; "small-cnn" is the demo's tiny CNN
    mode: str = "full"                       # full | linear
    epochs: int = 40
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 0.01
    precision: str = "auto"
    accelerator: str = "auto"
    seed: int = 0
    bootstrap: int = 1000
    methods: tuple[str, ...] | None = None   # None: full size, bicubic, and every codec with weights
    budget: float | None = None
    paper_image_size: int = 1024             # for the paper_gmacs reference column


#: Reduced configuration for a shared 2-core CPU (about 5-15 minutes with bicubic only).
REDUCED = SweepConfig()
#: The paper's configuration (B.1): hrnet_w64, 1024² inputs, batch 128, AdamW 1e-4, 100 epochs.
PAPER = dataclasses.replace(REDUCED, n_per_class=512, shape=(1024, 1024), backbone="hrnet_w64", epochs=100,
                            batch_size=128, lr=1e-4)


@dataclass
class SweepRow:
    method: str
    f: int
    C: int
    gamma: float          # compression ratio: pixels / latent values = f² / C
    input: str            # h×w of what the backbone sees
    gmacs: float          # backbone used, one input
    paper_gmacs: float    # hrnet_w64 at paper_image_size / f (Table 1's FLOPS column)
    auroc: float
    ci_lo: float
    ci_hi: float
    seconds: float        # encode + train + evaluate
    bytes_per_image: float
    family: str = ""

    def __post_init__(self) -> None:
        if not self.family:
            self.family = method_family(self.method, self.C)


def method_family(method: str, C: int) -> str:
    """The plot line a method belongs to: bicubic, ``kl C=4``, sd-vae, ``medvae C=1`` ..."""
    if method == FULL:
        return FULL
    if method.startswith("bicubic"):
        return "bicubic"
    if method.startswith("sd-vae"):
        return "sd-vae"
    base = re.sub(r"-f\d+(c\d+)?$", "", method)
    if base == "medvae":
        return "medvae C=1" if C == 1 else "medvae C>1"
    return f"{base} C={C}"


# ----------------------------------------------------------------------------- budget

def select_within_budget(rows: Sequence[SweepRow], budget: float) -> SweepRow:
    """The cheapest row (fewest GMACs; ties: larger γ, then higher AUROC) whose AUROC is at
    least the full-size AUROC minus ``budget``. The full-size row always qualifies, so it is
    the answer when no compressed row does."""
    full = [r for r in rows if r.method == FULL]
    if not full:
        raise ValueError("budget selection needs a full-size row")
    floor = full[0].auroc - float(budget)
    ok = [r for r in rows if r.auroc >= floor - 1e-12]
    return min(ok, key=lambda r: (r.gmacs, -r.gamma, -r.auroc))


# ----------------------------------------------------------------------------- methods

def available_methods(*, include_kl: bool = True) -> list[str]:
    """Full size, bicubic f=4/8/16, and every registered KL / SD VAE / MedVAE codec whose
    weights load locally (no downloads; a codec without weights raises CodecError and is left out)."""
    from .codecs import create_codec, list_codecs
    from .errors import CodecError

    methods = [FULL] + [m for m in BICUBIC if m in list_codecs()]
    if include_kl:
        for name in list_codecs():
            if name.startswith("bicubic"):
                continue
            try:
                create_codec(name)
            except CodecError:
                continue
            except Exception as e:  # a broken local weights file: say so, keep sweeping
                print(f"  skipping {name}: {type(e).__name__}: {e}")
                continue
            methods.append(name)
    return methods


def parse_method(method: str) -> tuple[str, str | None]:
    """``NAME`` or ``NAME=WEIGHTS``: a registered codec, optionally with your own weights file
    (e.g. ``kl-f8c1=runs/vae/kl-f8c1/codec-best.safetensors``); NAME labels the row."""
    name, sep, weights = method.partition("=")
    if sep and not weights:
        raise ValueError(f"method {method!r}: empty weights path after '='")
    return name, (weights or None)


def unavailable_codecs(methods: Sequence[str]) -> list[str]:
    from .codecs import list_codecs

    names = {parse_method(m)[0] for m in methods}
    return [c for c in list_codecs() if not c.startswith("bicubic") and c not in names]


# ----------------------------------------------------------------------------- running

def _latent_bytes(ds) -> int:
    """Bytes of this dataset's stored latent objects (posterior mean, std if any, metadata), as
    serialised in the cache; other datasets sharing the cache namespace are not counted."""
    from .cache import encode_entry

    total = 0
    for i in range(len(ds)):
        e = ds.entry(i)
        total += len(encode_entry(e.mean, e.std, e.meta))
    return total


def _data_root(cfg: SweepConfig) -> Path:
    if cfg.data_root:
        return Path(cfg.data_root)
    from . import synthetic

    root = Path(cfg.workdir) / f"data-{cfg.kind}-{cfg.n_per_class}-{cfg.shape[0]}x{cfg.shape[1]}-s{cfg.seed}"
    if not (root / "README.txt").exists():
        print(f"Writing a SYNTHETIC dataset to {root} ({2 * cfg.n_per_class} images {cfg.shape[0]}x{cfg.shape[1]})")
        synthetic.make_dataset(root, n_per_class=cfg.n_per_class, shape=tuple(cfg.shape), seed=cfg.seed,
                               kind=cfg.kind, progress=True)
    return root


def run_sweep(cfg: SweepConfig, *, log=print) -> list[SweepRow]:
    """Run every method of ``cfg`` and return one row each (also written by :func:`write_outputs`)."""
    import numpy as np
    import torch
    from torch.utils.data import TensorDataset

    from trainers.probe import fit_probe, stratified_split

    from .dataset import LatentDataset
    from .flops import hrnet_gmacs

    methods = list(cfg.methods) if cfg.methods else available_methods()
    root = _data_root(cfg)
    cache = Path(cfg.workdir) / "cache"
    shape = tuple(cfg.shape)
    rows: list[SweepRow] = []
    split = None
    for spec in methods:
        t0 = time.perf_counter()
        method, weights = parse_method(spec)
        log(f"[sweep] {spec} ...")
        ds = LatentDataset(root, codec=BICUBIC[0] if method == FULL else method, cache=cache, crop_roi=False,
                           image_size=shape, codec_kwargs={"weights": weights} if weights else None)
        n = len(ds)
        if split is None:
            split = stratified_split(ds.targets, cfg.test_fraction, cfg.seed)
        y = torch.tensor(ds.targets)
        if method == FULL:
            x = torch.stack([torch.from_numpy(np.ascontiguousarray(ds.load_source(i)[0]))[None] for i in range(n)])
            f, C = 1, 1
            per_image = sum(os.path.getsize(p) for p, _ in ds.samples) / n
        else:
            report = ds.fill(batch_size=16, progress=False)
            if report.failures:
                raise RuntimeError(f"{method}: {len(report.failures)} images failed to encode: {report.failures[0]}")
            x = torch.stack([ds[i][0] for i in range(n)]).float()
            f, C = ds.codec.f, ds.codec.latent_channels
            per_image = _latent_bytes(ds) / n
        tr, te = split
        res = fit_probe(TensorDataset(x[tr], y[tr]), TensorDataset(x[te], y[te]), in_chans=C,
                        num_classes=len(ds.classes), backbone=cfg.backbone, mode=cfg.mode, epochs=cfg.epochs,
                        batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay, seed=cfg.seed,
                        accelerator=cfg.accelerator, precision=cfg.precision, bootstrap=cfg.bootstrap)
        try:
            paper = hrnet_gmacs(f, C, cfg.paper_image_size)
        except Exception:  # timm missing, or paper_image_size not divisible by f
            paper = float("nan")
        row = SweepRow(method, f, C, f * f / C, "x".join(map(str, x.shape[2:])), res.gmacs, paper, res.auroc,
                       res.ci_lo, res.ci_hi, time.perf_counter() - t0, per_image)
        log(f"[sweep] {method}: AUROC {row.auroc:.3f} [{row.ci_lo:.3f}, {row.ci_hi:.3f}], "
            f"{row.gmacs:.4f} GMACs, {row.seconds:.0f} s")
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- outputs

COLUMNS = ("method", "f", "C", "gamma", "input", "gmacs", "paper_gmacs", "auroc", "ci_lo", "ci_hi", "seconds",
           "bytes_per_image")


def format_markdown(rows: Sequence[SweepRow], *, budget: float | None = None, title: str = "") -> str:
    lines = []
    if title:
        lines += [title, ""]
    lines += ["| method | f | C | γ | input | GMACs (backbone used) | GMACs hrnet_w64 @1024/f | AUROC (95% CI) "
              "| wall time (s) | bytes / image |", "|---|---:|---:|---:|---|---:|---:|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.method} | {r.f} | {r.C} | {r.gamma:g} | {r.input} | {r.gmacs:.4g} | {r.paper_gmacs:.2f} "
                     f"| {r.auroc:.3f} ({r.ci_lo:.3f}–{r.ci_hi:.3f}) | {r.seconds:.0f} | {r.bytes_per_image:,.0f} |")
    if budget is not None and any(r.method == FULL for r in rows):
        best = select_within_budget(rows, budget)
        lines += ["", f"Budget {budget:g} (AUROC drop from full size): cheapest within budget is **{best.method}** "
                      f"(f={best.f}, C={best.C}, AUROC {best.auroc:.3f}, {best.gmacs:.4g} GMACs)."]
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[SweepRow], path: str | os.PathLike) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow([getattr(r, c) if not isinstance(getattr(r, c), float) else f"{getattr(r, c):.6g}"
                        for c in COLUMNS])


def read_csv(path: str | os.PathLike) -> list[SweepRow]:
    with open(path, newline="") as fh:
        out = []
        for d in csv.DictReader(fh):
            out.append(SweepRow(d["method"], int(d["f"]), int(d["C"]), float(d["gamma"]), d["input"],
                                float(d["gmacs"]), float(d["paper_gmacs"]), float(d["auroc"]), float(d["ci_lo"]),
                                float(d["ci_hi"]), float(d["seconds"]), float(d["bytes_per_image"])))
        return out


def plot(rows: Sequence[SweepRow], path: str | os.PathLike, *, title: str = "") -> None:
    """AUROC (with CI bars) against GFLOPs (GMACs, log x), one line per method family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    families: dict[str, list[SweepRow]] = {}
    for r in rows:
        families.setdefault(r.family, []).append(r)
    for fam, rs in families.items():
        rs = sorted(rs, key=lambda r: r.gmacs)
        xs = [r.gmacs for r in rs]
        ys = [r.auroc for r in rs]
        err = [[r.auroc - r.ci_lo for r in rs], [r.ci_hi - r.auroc for r in rs]]
        marker = "*" if fam == FULL else "o"
        ax.errorbar(xs, ys, yerr=err, marker=marker, markersize=10 if fam == FULL else 6, capsize=3,
                    label=fam, linestyle="-" if len(rs) > 1 else "none")
        for r in rs:
            if r.method != FULL:
                ax.annotate(f"f{r.f}", (r.gmacs, r.auroc), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("GFLOPs per image (GMACs, paper convention; log scale)")
    ax.set_ylabel("AUROC (test, 95% bootstrap CI)")
    ax.axhline(0.5, color="grey", lw=0.5, ls=":")
    import textwrap

    ax.set_title("\n".join(textwrap.wrap(title or "AUROC vs compute", 80)), fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def describe(cfg: SweepConfig) -> str:
    task = (f"SYNTHETIC fine-grained task ({cfg.kind} phantoms, {2 * cfg.n_per_class} images "
            f"{cfg.shape[0]}x{cfg.shape[1]}, {int(cfg.test_fraction * 100)}% held out)") if not cfg.data_root \
        else f"task at {cfg.data_root}"
    return (f"{task}; probe {cfg.backbone} ({cfg.mode}), AdamW lr {cfg.lr:g}, batch {cfg.batch_size}, "
            f"{cfg.epochs} epochs, seed {cfg.seed}")


def write_outputs(rows: Sequence[SweepRow], cfg: SweepConfig, *, skipped: Sequence[str] = ()) -> dict[str, Path]:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    title = f"# FLOPs vs AUROC sweep\n\n{describe(cfg)}."
    if skipped:
        title += f"\n\nNot run (no weights available locally): {', '.join(skipped)}."
    paths = {"md": out / "tradeoff.md", "csv": out / "tradeoff.csv", "png": out / "tradeoff.png",
             "json": out / "tradeoff.config.json"}
    paths["md"].write_text(format_markdown(rows, budget=cfg.budget, title=title))
    write_csv(rows, paths["csv"])
    plot(rows, paths["png"], title=describe(cfg))
    paths["json"].write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    return paths


# ----------------------------------------------------------------------------- command line

def add_arguments(p: argparse.ArgumentParser) -> None:
    d = REDUCED
    p.add_argument("--out", default=d.out, help="output folder for tradeoff.md/.csv/.png (default %(default)s)")
    p.add_argument("--workdir", default=d.workdir, help="synthetic data and latent caches (default %(default)s)")
    p.add_argument("--data-root", default=None, help="an ImageFolder-style task folder instead of the synthetic task")
    p.add_argument("--paper", action="store_true",
                   help="the paper's configuration: hrnet_w64, 1024x1024, batch 128, AdamW 1e-4, 100 epochs (GPU)")
    p.add_argument("--budget", type=float, default=None,
                   help="report the cheapest (f, C) whose AUROC is within this drop of full size, e.g. 0.02")
    p.add_argument("--methods", nargs="+", default=None,
                   help=f"methods to run: '{FULL}', codec names, or NAME=WEIGHTS for your own weights file "
                        "(e.g. kl-f8c1=runs/vae/kl-f8c1/codec-best.safetensors); default: full size, bicubic, "
                        "codecs with weights")
    p.add_argument("--kind", choices=("calcification", "fracture"), default=None)
    p.add_argument("--n-per-class", type=int, default=None)
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None)
    p.add_argument("--backbone", default=None, help="timm model name or small-cnn")
    p.add_argument("--mode", choices=("full", "linear"), default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--bootstrap", type=int, default=None)


def config_from_args(args: argparse.Namespace) -> SweepConfig:
    cfg = PAPER if args.paper else REDUCED
    over: dict[str, Any] = {"out": args.out, "workdir": args.workdir, "data_root": args.data_root,
                            "budget": args.budget}
    if args.methods:
        over["methods"] = tuple(args.methods)
    if args.size:
        over["shape"] = tuple(args.size)
    for name in ("kind", "n_per_class", "backbone", "mode", "epochs", "batch_size", "lr", "seed", "bootstrap"):
        if getattr(args, name) is not None:
            over[name] = getattr(args, name)
    return dataclasses.replace(cfg, **over)


def run_cli(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    t0 = time.perf_counter()
    methods = list(cfg.methods) if cfg.methods else available_methods()
    # "not run for lack of weights" only means something when the methods were not chosen by hand
    skipped = [] if cfg.methods else unavailable_codecs(methods)
    print(f"methods: {', '.join(methods)}")
    if skipped:
        print(f"no local weights, not run: {', '.join(skipped)}")
    cfg = dataclasses.replace(cfg, methods=tuple(methods))
    rows = run_sweep(cfg)
    paths = write_outputs(rows, cfg, skipped=skipped)
    print()
    print(paths["md"].read_text())
    print(f"wrote {', '.join(str(p) for p in paths.values())} in {time.perf_counter() - t0:.0f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/tradeoff.py", description="FLOPs vs AUROC sweep (Table 1 trade-off).")
    add_arguments(p)
    return run_cli(p.parse_args(argv))


__all__ = ["FULL", "PAPER", "REDUCED", "SweepConfig", "SweepRow", "available_methods", "format_markdown",
           "main", "method_family", "parse_method", "plot", "read_csv", "run_sweep", "select_within_budget", "write_csv",
           "write_outputs"]
