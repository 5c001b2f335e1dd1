"""``latentds demo``: the whole idea in a few minutes on a laptop CPU, offline.

It writes a small SYNTHETIC DICOM dataset (the graded task: phantoms with or without a
calcification cluster whose speck size, 1.5-24 px, and contrast are drawn per image), encodes
it into a ``LatentDataset`` per codec, trains the same probe on the latents and on the
full-size images, and prints AUROC, GFLOPs per image, wall time and bytes on disk per image.
For every f it also runs the lossless control ``s2d-f{f}c{f²}`` (space-to-depth: all pixels,
rearranged into channels): when the control matches full size, a lower AUROC at that f is
the codec's information loss, not the probe's blindness. The probe is the small CNN behind a
learned depth-to-space stem for multi-channel latents (:mod:`latentds.probes`). The numbers
are about a synthetic task and a tiny model: they show the trade-off and the tooling, not
clinical performance.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchmetrics.functional.classification import binary_auroc
from tqdm.auto import tqdm

from .testing import synthetic
from .codecs import list_codecs
from .probes import build_probe_backbone, stem_lr_factor
from .codecs import shipped_kl_defaults
from .dataset import LatentDataset


@dataclass
class Row:
    method: str
    f: int
    channels: int
    auroc: float
    gflops: float
    seconds: float
    bytes_per_image: float


def small_cnn(in_channels: int, width: int = 16) -> nn.Module:
    """A tiny classifier: two full-resolution convolutions (enough to learn a speck detector)
    and global max pooling, because the finding is small and local."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(width, 1),
    )


def gflops_per_image(model: nn.Module, shape: tuple[int, ...]) -> float:
    """Forward FLOPs (multiply and add counted separately) of one input, in GFLOPs."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, *shape))
    return counter.get_total_flops() / 1e9


#: What the demo runs, for the command line to print above the table.
TASK_LINE = ("SYNTHETIC graded task (calcification clusters, speck size 1.5-24 px drawn per image); small CNN "
             "(behind a depth-to-space stem for multi-channel latents); test half of the data; s2d-f*c* rows with "
             "C = f^2 are the lossless controls.")


def train_and_score(x_tr: torch.Tensor, y_tr: torch.Tensor, x_te: torch.Tensor, y_te: torch.Tensor,
                    *, epochs: int, seed: int = 0, desc: str = "", f: int = 1) -> tuple[float, nn.Module]:
    """Train a fresh probe (Adam, BCE) and return test AUROC; deterministic from ``seed``.

    One-channel inputs get ``small_cnn``; a C-channel latent of factor ``f`` gets the small CNN
    behind the learned depth-to-space stem of :mod:`latentds.probes` (which standardises and
    flips after the stem itself; it trains at ``stem_lr_factor(C)`` times the lr)."""
    torch.manual_seed(seed)
    C = x_tr.shape[1]
    feats, has_stem = build_probe_backbone("d2s+small-cnn", C, f=f)
    if has_stem:
        model = nn.Sequential(feats, nn.Linear(feats.num_features, 1))
        stem = list(feats.stem.parameters())
        rest = [p for p in model.parameters() if all(p is not q for q in stem)]
        opt = torch.optim.Adam([{"params": rest}, {"params": stem, "lr": 3e-3 * stem_lr_factor(C)}], lr=3e-3)
    else:
        # Per-image standardisation: DICOMs without a window are shown over their own data range,
        # so brightness and contrast differ per image by an affine map that this removes.
        x_tr, x_te = _standardise(x_tr), _standardise(x_te)
        model = small_cnn(C)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(epochs), desc=desc, unit="epoch", leave=False):
        model.train()
        for idx in torch.randperm(len(x_tr), generator=gen).split(16):
            # flips keep the label (a finding stays a finding) and fight overfitting on few images;
            # a latent is not flipped (that would not mirror the image): the stem flips its output
            xb = x_tr[idx]
            if not has_stem and torch.rand(1, generator=gen).item() < 0.5:
                xb = xb.flip(-1)
            loss = nn.functional.binary_cross_entropy_with_logits(model(xb)[:, 0], y_tr[idx].float())
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        scores = torch.cat([model(b)[:, 0] for b in x_te.split(32)])
    return float(binary_auroc(scores, y_te)), model


def _standardise(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean) / (x.std(dim=(2, 3), keepdim=True) + 1e-6)


def _split(n: int, targets: list[int], seed: int) -> tuple[list[int], list[int]]:
    """Stratified half split, deterministic."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in sorted(set(targets)):
        idx = [i for i in range(n) if targets[i] == c]
        rng.shuffle(idx)
        half = len(idx) // 2
        train += idx[:half]
        test += idx[half:]
    return sorted(train), sorted(test)


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.name.startswith(".tmp-"))


def run_demo(workdir: str | os.PathLike[str] = "latentds-demo", *, n_per_class: int = 96,
             shape: tuple[int, int] = (192, 160), epochs: int = 40, seed: int = 0,
             codecs: tuple[str, ...] | None = None, graded: bool = True,
             controls: bool | None = None) -> list[Row]:
    """Run the demo; ``controls`` (default: when ``codecs`` is not given by hand) adds the
    lossless ``s2d-f{f}c{f²}`` control after the first row of each f."""
    if controls is None:
        controls = codecs is None
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    work = Path(workdir)
    data = work / ("data-graded" if graded else "data")
    if not (data / synthetic.FINDINGS_FILE).exists():
        print(f"Writing a SYNTHETIC DICOM dataset to {data} ({2 * n_per_class} images, {shape[0]}x{shape[1]}) ...")
        synthetic.make_dataset(data, n_per_class=n_per_class, shape=shape, seed=seed, progress=True, graded=graded)
    if codecs is None:
        codecs = tuple(c for c in ("bicubic-f4", "bicubic-f8") if c in list_codecs())
        codecs += tuple(c for c in ("kl-f4c4", "kl-f8c4") if c in shipped_kl_defaults())
    if controls:  # the lossless control of every f run, right after that f's first row
        out: list[str] = []
        for name in codecs:
            out.append(name)
            m = re.search(r"-f(\d+)", name)
            ctrl = f"s2d-f{m.group(1)}c{int(m.group(1)) ** 2}" if m else None
            if ctrl and ctrl in list_codecs() and ctrl not in out and ctrl not in codecs:
                out.append(ctrl)
        codecs = tuple(out)

    rows: list[Row] = []
    # Full size: the images themselves (preprocessed, fixed size so they batch).
    t0 = time.perf_counter()
    ref = LatentDataset(data, codec="bicubic-f4", cache=work / "cache", crop_roi=False, image_size=shape)
    n = len(ref)
    train, test = _split(n, ref.targets, seed)
    y = torch.tensor(ref.targets)
    images = torch.stack([torch.from_numpy(ref.load_source(i)[0])[None] for i in
                          tqdm(range(n), desc="full size: reading DICOMs", unit="img")])
    auroc, model = train_and_score(images[train], y[train], images[test], y[test], epochs=epochs, seed=seed,
                                   desc="full size: training")
    dicom_bytes = sum(os.path.getsize(p) for p, _ in ref.samples) / n
    rows.append(Row("full size", 1, 1, auroc, gflops_per_image(model, tuple(images.shape[1:])),
                    time.perf_counter() - t0, dicom_bytes))

    for name in codecs:
        t0 = time.perf_counter()
        ds = LatentDataset(data, codec=name, cache=work / "cache", crop_roi=False, image_size=shape)
        ds.fill(batch_size=16, progress=True)
        lat = torch.stack([ds[i][0] for i in range(n)])
        auroc, model = train_and_score(lat[train], y[train], lat[test], y[test], epochs=epochs, seed=seed,
                                       desc=f"{name}: training", f=ds.codec.f)
        per_image = _dir_bytes(Path(ds.cache.location.path)) / n
        rows.append(Row(name, ds.codec.f, ds.codec.latent_channels, auroc,
                        gflops_per_image(model, tuple(lat.shape[1:])), time.perf_counter() - t0, per_image))
    return rows



def format_table(rows: list[Row]) -> str:
    head = "| method | f | C | AUROC (test) | GFLOPs / image | wall time (s) | bytes on disk / image |"
    lines = [head, "|" + "---|" * 7]
    full = next((r for r in rows if r.f == 1), None)
    for r in rows:
        label = f"{r.method} (lossless control)" if r.f > 1 and r.channels == r.f * r.f else r.method
        lines.append(f"| {label} | {r.f} | {r.channels} | {r.auroc:.3f} | {r.gflops:.4f} | {r.seconds:.1f} "
                     f"| {r.bytes_per_image:,.0f} |")
    if full is not None:
        for r in rows:
            if r.f > 1 and r.channels == r.f * r.f and full.auroc - r.auroc > 0.03:
                lines.append(f"\nf={r.f}: the lossless control scores {r.auroc:.3f} against full size "
                             f"{full.auroc:.3f}: the probe cannot read {r.channels} channels at f={r.f}, so rows at "
                             "this f measure the probe, not the codec.")
    return "\n".join(lines)


__all__ = ["Row", "TASK_LINE", "format_table", "gflops_per_image", "run_demo", "small_cnn", "train_and_score"]
