"""Running a sweep: encode the task once per codec (a ``LatentDataset``), train the probe with
every seed, score AUROC with its CI, and (tasks that record finding sizes) AUROC by size."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .config import BICUBIC, FULL, SweepConfig
from .methods import default_methods, parse_method, with_controls
from .rows import SweepRow, mark_controls


def _latent_bytes(ds) -> int:
    """Bytes of this dataset's stored latent objects (posterior mean, std if any, metadata), as
    serialised in the cache; other datasets sharing the cache namespace are not counted."""
    from ..store.entries import encode_entry

    total = 0
    for i in range(len(ds)):
        e = ds.entry(i)
        total += len(encode_entry(e.mean, e.std, e.meta))
    return total


def _failed(method: str, what: str, failures) -> Exception:
    """A row whose images do not all encode: the first file by name, as a typed one-line error."""
    from ..errors import ImageReadError

    f = failures[0]
    return ImageReadError(f"sweep row {method}: {len(failures)} {what} failed to encode, first {f.path}: "
                          f"{f.error_type}: {f.message}; fix or remove those files (`latentds encode` lists them all)")


def _data_root(cfg: SweepConfig) -> Path:
    if cfg.data_root:
        return Path(cfg.data_root)
    from ..testing import synthetic

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
    from ..testing import synthetic

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


def backbone_input_hw(module, hw: Sequence[int]) -> tuple[int, int]:
    """(h, w) the backbone of ``module`` (a probe module) sees for a latent of (h, w): a d2s stem
    multiplies both by its scale and pads them to the backbone's stride; without a stem the probe
    fits the input itself (``ProbeModel.backbone_input_shape``: padded to the stride)."""
    feats = module.model.backbone
    stem = getattr(feats, "stem", None)
    if stem is None:
        return tuple(int(v) for v in module.model.backbone_input_shape((1, *hw))[-2:])
    s = int(getattr(getattr(stem, "shuffle", None), "upscale_factor", 1))
    m = int(getattr(feats, "multiple", 1))
    return tuple(-(-int(v) * s // m) * m for v in hw)


def run_sweep(cfg: SweepConfig, *, log=print, breakdown: list | None = None,
              on_row: Callable[[list[SweepRow]], None] | None = None) -> list[SweepRow]:
    """Run every method of ``cfg`` with every seed and return one row each (also written by
    :func:`write_outputs`); control flags are set (:func:`mark_controls`). ``breakdown``: a
    list that receives a :class:`SizeBreakdown` per method when the task records finding
    sizes. ``on_row(rows)``: called with the rows so far after each method (the command line
    rewrites its outputs then, so a sweep stopped after hours keeps every finished row)."""
    import numpy as np
    import torch
    from torch.utils.data import TensorDataset

    from latentds.train.probe import EpochSubset, fit_probe, stratified_split

    from ..dataset import LatentDataset
    from ..flops import hrnet_gmacs
    from ..probes import make_probe_module

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
        views = 1 if method == FULL else int(cfg.views)  # full size: the image, no codec to cache views of
        vds = None
        if method == FULL:
            x = torch.stack([torch.from_numpy(np.ascontiguousarray(ds.load_source(i)[0]))[None] for i in range(n)])
            f, C = 1, 1
            per_image = sum(os.path.getsize(p) for p, _ in ds.samples) / n
        else:
            report = ds.fill(batch_size=16, progress=False)
            if report.failures:
                raise _failed(method, "images", report.failures)
            x = torch.stack([ds[i][0] for i in range(n)]).float()
            f, C = ds.codec.f, ds.codec.latent_channels
            per_image = _latent_bytes(ds) / n * views  # the cache holds K views (of equal size) per image
            if views > 1:  # view 0 (x) is tested; training serves another cached view every epoch
                vds = LatentDataset(root, codec=ds.codec, cache=cache, crop_roi=False, image_size=shape, views=views)
                report = vds.fill(batch_size=16, progress=False)
                if report.failures:
                    raise _failed(method, "views", report.failures)
        results, preds, seen = [], [], ""
        for seed in seeds:
            tr, te = splits[seed]
            module = make_probe_module(cfg.backbone, C, len(ds.classes), f=f, mode=cfg.mode, lr=cfg.lr,
                                       weight_decay=cfg.weight_decay, stem_chans=cfg.stem_chans,
                                       stem_kernel=cfg.stem_kernel, stem_init=cfg.stem_init,
                                       stem_lr_scale=cfg.stem_lr_scale,
                                       backbone_kwargs={"width": cfg.probe_width} if cfg.probe_width else None)
            train = EpochSubset(vds, tr) if vds is not None else TensorDataset(x[tr], y[tr])
            res = fit_probe(train, TensorDataset(x[te], y[te]), in_chans=C,
                            num_classes=len(ds.classes), epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                            weight_decay=cfg.weight_decay, seed=seed, accelerator=cfg.accelerator,
                            precision=cfg.precision, bootstrap=cfg.bootstrap, module=module)
            results.append(res)
            seen = "x".join(map(str, backbone_input_hw(module, x.shape[2:])))
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
                       aurocs=tuple(aurocs), backbone_input=seen, views=views)
        log(f"[sweep] {method}: AUROC {row.auroc:.3f} [{row.ci_lo:.3f}, {row.ci_hi:.3f}] (seeds "
            f"{', '.join(f'{a:.3f}' for a in aurocs)}), {row.gmacs:.4f} GMACs, {row.seconds:.0f} s")
        rows.append(row)
        if breakdown is not None and sizes is not None and preds:
            breakdown.append(size_breakdown(method, sizes, preds))
        if on_row is not None:
            on_row(list(rows))
    mark_controls(rows)
    return rows


__all__ = ["SIZE_BINS", "SizeBreakdown", "backbone_input_hw", "run_sweep", "size_breakdown"]
