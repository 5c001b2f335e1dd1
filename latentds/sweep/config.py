"""What a sweep runs: :class:`SweepConfig`, the reduced CPU configuration and the paper's."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

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
    views: int = 1                           # codec rows: train on K cached augmented views (docs/views.md)
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


__all__ = ["BICUBIC", "FULL", "PAPER", "REDUCED", "SweepConfig"]
