"""The FLOPs-versus-AUROC sweep (the paper's Table 1 trade-off) on a task, shared by
``latentds sweep`` and ``benchmarks/tradeoff.py``.

Rows (:func:`default_methods`): full size; bicubic f=4/8/16; for every f swept the lossless
**control** ``s2d-f{f}c{f²}`` (space-to-depth: every pixel kept, only rearranged into
channels); ``s2d-f{f}c{C}`` at the (f, C) -- the compression ratio γ = f²/C -- of every
learned codec in the sweep (its free, FLOP-matched baseline); and every KL / SD VAE /
MedVAE codec whose weights are present locally. Each row encodes the task's images (a
``LatentDataset`` per codec), trains the same probe (:func:`latentds.train.probe.fit_probe`) with
every seed of ``seeds`` (a different train/test split and initialisation each), scores
AUROC with a bootstrap CI on the held-out split and reports the mean over seeds (and each
seed's value).

Controls: a probe that cannot use information spread over channels scores a lossless
latent like an erased one, and then every row at that f measures the probe, not the codec.
So the report flags each f whose control's CI lies below the full-size AUROC ("this probe
cannot read C channels at f"), in the table and on the plot, and ``budget`` selection only
considers rows whose f passed its control. The default probe, ``d2s+small-cnn``
(:mod:`latentds.probes`: a learned depth-to-space stem before the small CNN), passes them
on the synthetic tasks; a plain ``small-cnn`` does not (benchmarks/RESULTS.md).

Outputs: ``tradeoff.md``, ``tradeoff.csv``, ``tradeoff.png`` (AUROC against GFLOPs, log x,
one line per family, controls and failed f marked) and, when the task records its finding
sizes (the synthetic tasks write ``findings.csv``), ``tradeoff_by_size.png`` / ``.csv``:
AUROC by finding size per method -- which f erases which size.

Default task: the SYNTHETIC graded task of :mod:`latentds.testing.synthetic` (calcification
clusters whose size and contrast are drawn from ranges, so that f = 4, 8, 16 erase more
and more of them) at a reduced configuration for a 2-core CPU (:data:`REDUCED`);
``paper=True`` / ``--paper`` switches to the paper's probe (hrnet_w64 behind the stem,
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
    graded: bool = True                      # synthetic: the graded task (sizes/contrasts from ranges) or the fine one
    data_root: str | None = None             # an ImageFolder-style task instead of the synthetic one
    n_per_class: int = 128
    shape: tuple[int, int] = (192, 160)      # image (H, W) fed to the full-size row and to the codecs
    test_fraction: float = 0.5
    backbone: str = "d2s+small-cnn"          # [d2s+]small-cnn | [d2s+]<timm name>; d2s+: depth-to-space stem
    mode: str = "full"                       # full | linear
    stem_chans: int = 4                      # d2s stem: channels per output pixel
    stem_kernel: int = 1                     # d2s stem: kernel of the convolution before pixel_shuffle
    stem_init: str = "d2s"                   # d2s stem: start as the plain depth-to-space, or "random"
    stem_lr_scale: float = 0.1               # d2s stem: lr x stem_lr_scale x 16 / C (probes.stem_lr_factor)
    probe_width: int | None = None           # small-cnn width (None: its default, 16)
    epochs: int = 40
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 0.01
    precision: str = "auto"
    accelerator: str = "auto"
    seed: int = 0                            # synthetic data seed
    seeds: tuple[int, ...] = (0, 1)          # probe seeds (split + initialisation); rows report their mean
    bootstrap: int = 1000
    methods: tuple[str, ...] | None = None   # None: default_methods()
    controls: bool = True                    # add the lossless s2d-f{f}c{f²} control for every f swept
    budget: float | None = None
    paper_image_size: int = 1024             # for the paper_gmacs reference column


#: Reduced configuration for a 2-core CPU (benchmarks/RESULTS.md has its measured wall time).
REDUCED = SweepConfig()
#: The paper's configuration (B.1): hrnet_w64, 1024² inputs, batch 128, AdamW 1e-4, 100 epochs.
PAPER = dataclasses.replace(REDUCED, n_per_class=512, shape=(1024, 1024), backbone="d2s+hrnet_w64", epochs=100,
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
    aurocs: tuple[float, ...] = ()   # one per seed (auroc is their mean; ci_lo / ci_hi the mean bounds)
    control: str = ""     # "pass" / "FAIL": the lossless control at this row's f; "none": no control ran

    def __post_init__(self) -> None:
        if not self.family:
            self.family = method_family(self.method, self.C)
        self.aurocs = tuple(float(a) for a in self.aurocs)


CONTROL_FAMILY = "s2d lossless control"


def control_method(f: int) -> str:
    """The lossless control at factor ``f``: space-to-depth with C = f²."""
    return f"s2d-f{f}c{f * f}"


def is_control(method: str) -> bool:
    m = re.fullmatch(r"s2d-f(\d+)c(\d+)", method)
    return bool(m) and int(m.group(2)) == int(m.group(1)) ** 2


def method_family(method: str, C: int) -> str:
    """The plot line a method belongs to: bicubic, ``kl C=4``, sd-vae, ``medvae C=1`` ..."""
    if method == FULL:
        return FULL
    if method.startswith("bicubic"):
        return "bicubic"
    if is_control(method):
        return CONTROL_FAMILY
    if method.startswith("sd-vae"):
        return "sd-vae"
    base = re.sub(r"-f\d+(c\d+)?$", "", method)
    if base == "medvae":
        return "medvae C=1" if C == 1 else "medvae C>1"
    return f"{base} C={C}"


# ----------------------------------------------------------------------------- budget

def control_results(rows: Sequence[SweepRow]) -> dict[int, dict[str, Any]]:
    """Per f with a control row: ``{"control", "auroc", "ci_hi", "full", "gap", "passed"}``.

    A control fails when its whole CI lies below the full-size AUROC (the drop is beyond the
    CI): the probe cannot read the C = f² channels of a lossless latent at that f, so every
    row at that f measures the probe, not the codec."""
    full = next((r for r in rows if r.method == FULL), None)
    out: dict[int, dict[str, Any]] = {}
    if full is None:
        return out
    for r in rows:
        if is_control(r.method):
            out[r.f] = {"control": r.method, "auroc": r.auroc, "ci_hi": r.ci_hi, "full": full.auroc,
                        "gap": full.auroc - r.auroc, "passed": bool(r.ci_hi >= full.auroc)}
    return out


def mark_controls(rows: Sequence[SweepRow]) -> dict[int, dict[str, Any]]:
    """Set each compressed row's ``control`` to pass / FAIL / none from :func:`control_results`."""
    res = control_results(rows)
    for r in rows:
        if r.method == FULL:
            r.control = ""
        else:
            r.control = ("pass" if res[r.f]["passed"] else "FAIL") if r.f in res else "none"
    return res


def select_within_budget(rows: Sequence[SweepRow], budget: float, *, require_control: bool = True) -> SweepRow:
    """The cheapest row (fewest GMACs; ties: larger γ, then higher AUROC) whose AUROC is at
    least the full-size AUROC minus ``budget``. The full-size row always qualifies, so it is
    the answer when no compressed row does.

    ``require_control``: only rows whose f passed its lossless control are candidates (an f
    without a control row, or with a failed one, says nothing about the codec)."""
    full = [r for r in rows if r.method == FULL]
    if not full:
        raise ValueError("budget selection needs a full-size row")
    floor = full[0].auroc - float(budget)
    passed = {f for f, c in control_results(rows).items() if c["passed"]}
    ok = [r for r in rows if r.auroc >= floor - 1e-12 and (r.method == FULL or not require_control or r.f in passed)]
    return min(ok, key=lambda r: (r.gmacs, -r.gamma, -r.auroc))


# ----------------------------------------------------------------------------- methods

def _weightless(name: str) -> bool:
    """Codecs that need no weights (bicubic, space-to-depth): baselines, not learned codecs."""
    return name.startswith(("bicubic", "s2d-"))


def _fc(name: str) -> tuple[int, int] | None:
    m = re.search(r"-f(\d+)c(\d+)$", name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def with_controls(methods: Sequence[str], *, baselines: bool = True) -> list[str]:
    """``methods`` plus, for every f among them, the lossless control ``s2d-f{f}c{f²}`` and
    (``baselines``) ``s2d-f{f}c{C}`` at the (f, C) of every learned codec among them, where
    such an s2d codec exists (C a square whose root divides f). Order: full size, bicubic,
    controls, s2d baselines, the rest as given."""
    from .codecs import create_codec, list_codecs

    known = set(list_codecs())
    names = [parse_method(m)[0] for m in methods]
    fs = set()
    for m in names:
        if m == FULL:
            continue
        fc = _fc(m)
        if fc:
            fs.add(fc[0])
        elif m in known:
            try:
                fs.add(int(create_codec(m).f))
            except Exception:  # noqa: BLE001 - a codec that cannot be built is reported when it runs
                pass
    extra = [control_method(f) for f in sorted(fs) if control_method(f) in known]
    if baselines:
        for m in names:
            fc = _fc(m)
            if fc and not _weightless(m) and m != FULL and fc[1] > 1:
                cand = f"s2d-f{fc[0]}c{fc[1]}"
                if cand in known and cand not in extra:
                    extra.append(cand)
    out = [m for m in methods if parse_method(m)[0] == FULL]
    out += [m for m in methods if parse_method(m)[0].startswith("bicubic")]
    out += [m for m in extra if m not in methods]
    out += [m for m in methods if m not in out]
    return list(dict.fromkeys(out))


def default_methods() -> list[str]:
    """Full size, bicubic f=4/8/16, every learned codec with weights, and their controls and
    s2d baselines (:func:`with_controls`)."""
    return with_controls(available_methods())


def available_methods(*, include_kl: bool = True) -> list[str]:
    """Full size, bicubic f=4/8/16, and every registered KL / SD VAE / MedVAE codec whose
    weights load locally (no downloads; a codec without weights raises CodecError and is left
    out). Weight-less baselines (s2d) are not listed here: :func:`with_controls` adds them."""
    from .codecs import create_codec, list_codecs
    from .errors import CodecError

    methods = [FULL] + [m for m in BICUBIC if m in list_codecs()]
    if include_kl:
        for name in list_codecs():
            if _weightless(name):
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
    return [c for c in list_codecs() if not _weightless(c) and c not in names]


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
    from .testing import synthetic

    task = "graded" if cfg.graded else "fine"
    root = (Path(cfg.workdir) / f"data-{cfg.kind}-{task}-{cfg.n_per_class}-{cfg.shape[0]}x{cfg.shape[1]}"
            f"-s{cfg.seed}")
    if not (root / synthetic.FINDINGS_FILE).exists():
        print(f"Writing a SYNTHETIC {task} dataset to {root} ({2 * cfg.n_per_class} images {cfg.shape[0]}x{cfg.shape[1]})")
        synthetic.make_dataset(root, n_per_class=cfg.n_per_class, shape=tuple(cfg.shape), seed=cfg.seed,
                               kind=cfg.kind, graded=cfg.graded, progress=True)
    return root


#: Finding-size bins (px) of the per-size breakdown.
SIZE_BINS = ((0.0, 2.0), (2.0, 4.0), (4.0, 8.0), (8.0, 16.0), (16.0, float("inf")))


def _bin_label(lo: float, hi: float) -> str:
    return f">={lo:g}" if hi == float("inf") else f"{lo:g}-{hi:g}"


@dataclass
class SizeBreakdown:
    """AUROC of each method on the positives of one finding-size bin against all negatives,
    test predictions pooled over seeds (each seed's test split scored by its own probe)."""

    method: str
    bins: tuple[str, ...]
    auroc: tuple[float, ...]     # NaN: fewer than 3 positives in the bin
    n_pos: tuple[int, ...]


def size_breakdown(method: str, sizes, preds) -> SizeBreakdown:
    """``sizes``: finding size per sample (0 for negatives); ``preds``: [(test indices, scores,
    targets)] per seed. Binary tasks only."""
    import numpy as np

    from latentds.train.probe.metrics import auroc as auroc_fn
    import torch

    bins, vals, counts = [], [], []
    for lo, hi in SIZE_BINS:
        per_seed, n = [], 0
        for idx, scores, targets in preds:
            sz = np.asarray([sizes[i] for i in idx], dtype=float)
            t = np.asarray(targets)
            pos = (t == 1) & (sz >= lo) & (sz < hi)
            sel = (t == 0) | pos
            n += int(pos.sum())
            if pos.sum() >= 3 and (t == 0).sum() >= 3:
                per_seed.append(auroc_fn(torch.as_tensor(np.asarray(scores)[sel]), torch.as_tensor(t[sel]), 2))
        bins.append(_bin_label(lo, hi))
        vals.append(float(np.mean(per_seed)) if per_seed else float("nan"))
        counts.append(n)
    return SizeBreakdown(method, tuple(bins), tuple(vals), tuple(counts))


def _finding_sizes(root: Path, ds) -> list[float] | None:
    """Finding size per sample of ``ds`` from ``root/findings.csv``, or None (no such file)."""
    from .testing import synthetic

    found = synthetic.read_findings(root)
    if found is None or ds.classes != list(synthetic.CLASSES):
        return None
    out = []
    for p, _ in ds.samples:
        rel = Path(p).resolve().relative_to(root.resolve()).as_posix()
        if rel not in found:
            return None
        out.append(found[rel]["size_px"])
    return out


def run_sweep(cfg: SweepConfig, *, log=print, breakdown: list | None = None) -> list[SweepRow]:
    """Run every method of ``cfg`` with every seed and return one row each (also written by
    :func:`write_outputs`); control flags are set (:func:`mark_controls`). ``breakdown``: a
    list that receives a :class:`SizeBreakdown` per method when the task records finding
    sizes."""
    import numpy as np
    import torch
    from torch.utils.data import TensorDataset

    from latentds.train.probe import fit_probe, stratified_split

    from .dataset import LatentDataset
    from .flops import hrnet_gmacs
    from .probes import make_probe_module

    if cfg.methods:
        methods = with_controls(cfg.methods, baselines=False) if cfg.controls else list(cfg.methods)
    else:
        methods = default_methods()
    seeds = tuple(cfg.seeds) or (cfg.seed,)
    root = _data_root(cfg)
    cache = Path(cfg.workdir) / "cache"
    shape = tuple(cfg.shape)
    rows: list[SweepRow] = []
    splits: dict[int, tuple[list[int], list[int]]] = {}
    sizes = None
    for spec in methods:
        t0 = time.perf_counter()
        method, weights = parse_method(spec)
        log(f"[sweep] {spec} ...")
        ds = LatentDataset(root, codec=BICUBIC[0] if method == FULL else method, cache=cache, crop_roi=False,
                           image_size=shape, codec_kwargs={"weights": weights} if weights else None)
        n = len(ds)
        if not splits:
            splits = {s: stratified_split(ds.targets, cfg.test_fraction, s) for s in seeds}
            sizes = _finding_sizes(root, ds)
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
        results, preds = [], []
        for seed in seeds:
            tr, te = splits[seed]
            module = make_probe_module(cfg.backbone, C, len(ds.classes), f=f, mode=cfg.mode, lr=cfg.lr,
                                       weight_decay=cfg.weight_decay, stem_chans=cfg.stem_chans,
                                       stem_kernel=cfg.stem_kernel, stem_init=cfg.stem_init,
                                       stem_lr_scale=cfg.stem_lr_scale,
                                       backbone_kwargs={"width": cfg.probe_width} if cfg.probe_width else None)
            res = fit_probe(TensorDataset(x[tr], y[tr]), TensorDataset(x[te], y[te]), in_chans=C,
                            num_classes=len(ds.classes), epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                            weight_decay=cfg.weight_decay, seed=seed, accelerator=cfg.accelerator,
                            precision=cfg.precision, bootstrap=cfg.bootstrap, module=module)
            results.append(res)
            if res.scores is not None and res.scores.ndim == 1:
                preds.append((te, res.scores.numpy(), res.targets.numpy()))
            log(f"[sweep] {method} seed {seed}: AUROC {res.auroc:.3f} [{res.ci_lo:.3f}, {res.ci_hi:.3f}]")
        try:
            paper = hrnet_gmacs(f, C, cfg.paper_image_size)
        except Exception:  # timm missing, or paper_image_size not divisible by f
            paper = float("nan")
        aurocs = [r.auroc for r in results]
        row = SweepRow(method, f, C, f * f / C, "x".join(map(str, x.shape[2:])), results[0].gmacs, paper,
                       float(np.mean(aurocs)), float(np.mean([r.ci_lo for r in results])),
                       float(np.mean([r.ci_hi for r in results])), time.perf_counter() - t0, per_image,
                       aurocs=tuple(aurocs))
        log(f"[sweep] {method}: AUROC {row.auroc:.3f} [{row.ci_lo:.3f}, {row.ci_hi:.3f}] (seeds "
            f"{', '.join(f'{a:.3f}' for a in aurocs)}), {row.gmacs:.4f} GMACs, {row.seconds:.0f} s")
        rows.append(row)
        if breakdown is not None and sizes is not None and preds:
            breakdown.append(size_breakdown(method, sizes, preds))
    mark_controls(rows)
    return rows


# ----------------------------------------------------------------------------- outputs

COLUMNS = ("method", "f", "C", "gamma", "input", "gmacs", "paper_gmacs", "auroc", "ci_lo", "ci_hi", "seconds",
           "bytes_per_image", "aurocs", "control")


def control_warnings(rows: Sequence[SweepRow]) -> list[str]:
    """One sentence per f whose lossless control failed."""
    out = []
    for f, c in sorted(control_results(rows).items()):
        if not c["passed"]:
            out.append(f"**f={f}: this probe cannot read {f * f} channels at f={f}** (lossless control {c['control']} "
                       f"AUROC {c['auroc']:.3f}, CI up to {c['ci_hi']:.3f}, below full size {c['full']:.3f}): "
                       f"rows at this f measure the probe, not the codec.")
    return out


def format_markdown(rows: Sequence[SweepRow], *, budget: float | None = None, title: str = "") -> str:
    lines = []
    if title:
        lines += [title, ""]
    lines += ["| method | f | C | γ | input | GMACs (probe used) | GMACs hrnet_w64 @1024/f | AUROC mean (95% CI) "
              "| AUROC per seed | control at f | wall time (s) | bytes / image |",
              "|---|---:|---:|---:|---|---:|---:|---|---|---|---:|---:|"]
    for r in rows:
        flag = {"FAIL": "**FAIL**", "pass": "pass", "none": "not run"}.get(r.control, "")
        if is_control(r.method):
            flag = f"{flag} (this row)" if flag else "(this row)"
        seeds = ", ".join(f"{a:.3f}" for a in r.aurocs)
        lines.append(f"| {r.method} | {r.f} | {r.C} | {r.gamma:g} | {r.input} | {r.gmacs:.4g} | {r.paper_gmacs:.2f} "
                     f"| {r.auroc:.3f} ({r.ci_lo:.3f}–{r.ci_hi:.3f}) | {seeds} | {flag} | {r.seconds:.0f} "
                     f"| {r.bytes_per_image:,.0f} |")
    warnings = control_warnings(rows)
    if warnings:
        lines += [""] + [f"- {w}" for w in warnings]
    elif control_results(rows):
        lines += ["", "Every lossless control is within its CI of full size: this probe reads the channels at "
                      f"f = {', '.join(str(f) for f in sorted(control_results(rows)))}."]
    if budget is not None and any(r.method == FULL for r in rows):
        best = select_within_budget(rows, budget)
        lines += ["", f"Budget {budget:g} (AUROC drop from full size; only rows whose f passed its control): "
                      f"cheapest within budget is **{best.method}** "
                      f"(f={best.f}, C={best.C}, AUROC {best.auroc:.3f}, {best.gmacs:.4g} GMACs)."]
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, tuple):
        return ";".join(f"{a:.6g}" for a in v)
    return str(v)


def write_csv(rows: Sequence[SweepRow], path: str | os.PathLike) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow([_fmt(getattr(r, c)) for c in COLUMNS])


def read_csv(path: str | os.PathLike) -> list[SweepRow]:
    with open(path, newline="") as fh:
        out = []
        for d in csv.DictReader(fh):
            aurocs = tuple(float(a) for a in (d.get("aurocs") or "").split(";") if a)
            out.append(SweepRow(d["method"], int(d["f"]), int(d["C"]), float(d["gamma"]), d["input"],
                                float(d["gmacs"]), float(d["paper_gmacs"]), float(d["auroc"]), float(d["ci_lo"]),
                                float(d["ci_hi"]), float(d["seconds"]), float(d["bytes_per_image"]), aurocs=aurocs,
                                control=d.get("control") or ""))
        return out


def plot(rows: Sequence[SweepRow], path: str | os.PathLike, *, title: str = "") -> None:
    """AUROC (with CI bars) against GFLOPs (GMACs, log x), one line per method family. Control
    rows are drawn as open squares; rows at an f whose control failed get a red cross and the
    f is named in a red note."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    families: dict[str, list[SweepRow]] = {}
    for r in rows:
        families.setdefault(r.family, []).append(r)
    for fam, rs in families.items():
        rs = sorted(rs, key=lambda r: r.gmacs)
        xs = [r.gmacs for r in rs]
        ys = [r.auroc for r in rs]
        err = [[r.auroc - r.ci_lo for r in rs], [r.ci_hi - r.auroc for r in rs]]
        marker = "*" if fam == FULL else "s" if fam == CONTROL_FAMILY else "o"
        ax.errorbar(xs, ys, yerr=err, marker=marker, markersize=10 if fam == FULL else 6, capsize=3,
                    label=fam, linestyle="-" if len(rs) > 1 else "none",
                    markerfacecolor="none" if fam == CONTROL_FAMILY else None)
        for r in rs:
            if r.method != FULL:
                ax.annotate(f"f{r.f}", (r.gmacs, r.auroc), textcoords="offset points", xytext=(4, 4), fontsize=7)
    bad = [r for r in rows if r.control == "FAIL"]
    if bad:
        ax.scatter([r.gmacs for r in bad], [r.auroc for r in bad], marker="x", s=90, color="red", zorder=5,
                   label="control FAILED at this f")
        fs = sorted({r.f for r in bad})
        ax.text(0.01, 0.01, "probe cannot read the channels at f = " + ", ".join(map(str, fs))
                + ": those rows measure the probe, not the codec", transform=ax.transAxes, fontsize=7,
                color="red", va="bottom")
    ax.set_xscale("log")
    ax.set_xlabel("GFLOPs per image (GMACs, paper convention; log scale)")
    ax.set_ylabel("AUROC (test, mean over seeds, 95% bootstrap CI)")
    ax.axhline(0.5, color="grey", lw=0.5, ls=":")
    import textwrap

    ax.set_title("\n".join(textwrap.wrap(title or "AUROC vs compute", 90)), fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_by_size(breakdown: Sequence[SizeBreakdown], path: str | os.PathLike, *, title: str = "") -> None:
    """AUROC by finding size (x: size bin), one line per method: which f erases which size."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for b in breakdown:
        xs = [i for i, v in enumerate(b.auroc) if not math.isnan(v)]
        style = "-" if not is_control(b.method) else "--"
        ax.plot(xs, [b.auroc[i] for i in xs], style, marker="*" if b.method == FULL else "o", label=b.method)
    if breakdown:
        ax.set_xticks(range(len(breakdown[0].bins)))
        ax.set_xticklabels([f"{lbl} px\n(n={n})" for lbl, n in zip(breakdown[0].bins, breakdown[0].n_pos)], fontsize=7)
    ax.axhline(0.5, color="grey", lw=0.5, ls=":")
    ax.set_ylim(0.3, 1.02)
    ax.set_xlabel("finding size (px; positives of that size vs all negatives, test sets of all seeds)")
    ax.set_ylabel("AUROC (mean over seeds)")
    import textwrap

    ax.set_title("\n".join(textwrap.wrap(title or "AUROC by finding size", 90)), fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_by_size(breakdown: Sequence[SizeBreakdown]) -> str:
    if not breakdown:
        return ""
    b0 = breakdown[0]
    head = "| method | " + " | ".join(f"{lbl} px (n={n})" for lbl, n in zip(b0.bins, b0.n_pos)) + " |"
    lines = [head, "|---|" + "---:|" * len(b0.bins)]
    for b in breakdown:
        lines.append(f"| {b.method} | " + " | ".join("–" if v != v else f"{v:.3f}" for v in b.auroc) + " |")
    return "\n".join(lines) + "\n"


def describe(cfg: SweepConfig) -> str:
    task = "graded" if cfg.graded else "fine-grained"
    task = (f"SYNTHETIC {task} task ({cfg.kind} phantoms, {2 * cfg.n_per_class} images "
            f"{cfg.shape[0]}x{cfg.shape[1]}, {int(cfg.test_fraction * 100)}% held out)") if not cfg.data_root \
        else f"task at {cfg.data_root} (images resized to {cfg.shape[0]}x{cfg.shape[1]})"
    stem = (f" (stem: {cfg.stem_chans} ch/pixel, {cfg.stem_kernel}x{cfg.stem_kernel}, init {cfg.stem_init}, "
            f"lr x {cfg.stem_lr_scale:g}·16/C)") if cfg.backbone.startswith("d2s+") else ""
    seeds = tuple(cfg.seeds) or (cfg.seed,)
    return (f"{task}; probe {cfg.backbone}{stem} ({cfg.mode}), AdamW lr {cfg.lr:g}, batch {cfg.batch_size}, "
            f"{cfg.epochs} epochs, seeds {', '.join(map(str, seeds))} (mean reported)")


def write_outputs(rows: Sequence[SweepRow], cfg: SweepConfig, *, skipped: Sequence[str] = (),
                  breakdown: Sequence[SizeBreakdown] = ()) -> dict[str, Path]:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    mark_controls(rows)
    title = f"# FLOPs vs AUROC sweep\n\n{describe(cfg)}."
    if skipped:
        title += f"\n\nNot run (no weights available locally): {', '.join(skipped)}."
    paths = {"md": out / "tradeoff.md", "csv": out / "tradeoff.csv", "png": out / "tradeoff.png",
             "json": out / "tradeoff.config.json"}
    md = format_markdown(rows, budget=cfg.budget, title=title)
    if breakdown:
        paths["size_png"] = out / "tradeoff_by_size.png"
        paths["size_csv"] = out / "tradeoff_by_size.csv"
        md += "\n## AUROC by finding size\n\n" + format_by_size(breakdown)
        plot_by_size(breakdown, paths["size_png"], title=describe(cfg))
        with open(paths["size_csv"], "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["method", *breakdown[0].bins])
            for b in breakdown:
                w.writerow([b.method, *(f"{v:.6g}" for v in b.auroc)])
    paths["md"].write_text(md)
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
                   help="the paper's configuration: d2s+hrnet_w64, 1024x1024, batch 128, AdamW 1e-4, 100 epochs (GPU)")
    p.add_argument("--budget", type=float, default=None,
                   help="report the cheapest (f, C) whose AUROC is within this drop of full size, e.g. 0.02 "
                        "(only among rows whose f passed its lossless control)")
    p.add_argument("--methods", nargs="+", default=None,
                   help=f"methods to run: '{FULL}', codec names, or NAME=WEIGHTS for your own weights file "
                        "(e.g. kl-f8c1=runs/vae/kl-f8c1/codec-best.safetensors); the lossless control s2d-f{f}c{f^2} "
                        "of every f is added unless --no-controls; default: full size, bicubic, codecs with weights, "
                        "their s2d baselines and the controls")
    p.add_argument("--no-controls", action="store_true",
                   help="with --methods: do not add the lossless s2d controls (rows are then not checked)")
    p.add_argument("--kind", choices=("calcification", "fracture"), default=None)
    p.add_argument("--fine", action="store_true", help="the fine synthetic task (1-3 px findings) instead of the graded one")
    p.add_argument("--n-per-class", type=int, default=None)
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None)
    p.add_argument("--backbone", default=None,
                   help="probe: small-cnn, a timm name, or d2s+<either> (learned depth-to-space stem first; "
                        f"default {d.backbone})")
    p.add_argument("--stem-chans", type=int, default=None, help=f"d2s stem channels per pixel (default {d.stem_chans})")
    p.add_argument("--stem-kernel", type=int, default=None, help=f"d2s stem kernel (default {d.stem_kernel})")
    p.add_argument("--stem-init", choices=("d2s", "random"), default=None,
                   help=f"d2s stem initialisation (default {d.stem_init})")
    p.add_argument("--stem-lr-scale", type=float, default=None,
                   help=f"d2s stem learning rate: --lr x this x 16 / C, at most --lr (default {d.stem_lr_scale:g})")
    p.add_argument("--mode", choices=("full", "linear"), default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=None, help="synthetic data seed (default 0)")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help=f"probe seeds, one train/test split and initialisation each (default {' '.join(map(str, d.seeds))})")
    p.add_argument("--bootstrap", type=int, default=None)


def config_from_args(args: argparse.Namespace) -> SweepConfig:
    cfg = PAPER if args.paper else REDUCED
    over: dict[str, Any] = {"out": args.out, "workdir": args.workdir, "data_root": args.data_root,
                            "budget": args.budget}
    if args.methods:
        over["methods"] = tuple(args.methods)
    if args.size:
        over["shape"] = tuple(args.size)
    if getattr(args, "no_controls", False):
        over["controls"] = False
    if getattr(args, "fine", False):
        over["graded"] = False
    if getattr(args, "seeds", None):
        over["seeds"] = tuple(args.seeds)
    for name in ("kind", "n_per_class", "backbone", "mode", "epochs", "batch_size", "lr", "seed", "bootstrap",
                 "stem_chans", "stem_kernel", "stem_init", "stem_lr_scale"):
        if getattr(args, name, None) is not None:
            over[name] = getattr(args, name)
    return dataclasses.replace(cfg, **over)


def run_cli(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    t0 = time.perf_counter()
    if cfg.methods:
        methods = with_controls(cfg.methods, baselines=False) if cfg.controls else list(cfg.methods)
    else:
        methods = default_methods()
    # "not run for lack of weights" only means something when the methods were not chosen by hand
    skipped = [] if cfg.methods else unavailable_codecs(methods)
    print(f"methods: {', '.join(methods)}")
    if skipped:
        print(f"no local weights, not run: {', '.join(skipped)}")
    cfg = dataclasses.replace(cfg, methods=tuple(methods))
    breakdown: list[SizeBreakdown] = []
    rows = run_sweep(cfg, breakdown=breakdown)
    paths = write_outputs(rows, cfg, skipped=skipped, breakdown=breakdown)
    print()
    print(paths["md"].read_text())
    print(f"wrote {', '.join(str(p) for p in paths.values())} in {time.perf_counter() - t0:.0f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/tradeoff.py", description="FLOPs vs AUROC sweep (Table 1 trade-off).")
    add_arguments(p)
    return run_cli(p.parse_args(argv))


__all__ = ["CONTROL_FAMILY", "FULL", "PAPER", "REDUCED", "SIZE_BINS", "SizeBreakdown", "SweepConfig", "SweepRow",
           "available_methods", "control_method", "control_results", "default_methods", "format_by_size",
           "format_markdown", "is_control", "main", "mark_controls", "method_family", "parse_method", "plot",
           "plot_by_size", "read_csv", "run_sweep", "select_within_budget", "size_breakdown", "with_controls",
           "write_csv", "write_outputs"]
