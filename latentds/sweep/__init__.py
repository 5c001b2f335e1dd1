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

Modules: :mod:`.config` (what runs), :mod:`.rows` (rows, controls, budget), :mod:`.methods`
(which rows), :mod:`.run` (encoding, training, per-size AUROC), :mod:`.report` (tables and
plots), :mod:`.cli` (arguments).
"""

from __future__ import annotations

from .cli import add_arguments, config_from_args, main, run_cli
from .config import BICUBIC, FULL, PAPER, REDUCED, SweepConfig
from .methods import available_methods, default_methods, parse_method, unavailable_codecs, with_controls
from .report import (COLUMNS, control_warnings, describe, format_by_size, format_markdown, plot, plot_by_size,
                     read_csv, write_csv, write_outputs)
from .rows import (CONTROL_FAMILY, SweepRow, control_method, control_results, is_control, mark_controls,
                   method_family, select_within_budget)
from .run import SIZE_BINS, SizeBreakdown, backbone_input_hw, run_sweep, size_breakdown

__all__ = ["CONTROL_FAMILY", "FULL", "PAPER", "REDUCED", "SIZE_BINS", "SizeBreakdown", "SweepConfig", "SweepRow",
           "available_methods", "backbone_input_hw", "control_method", "control_results", "default_methods", "format_by_size",
           "format_markdown", "is_control", "main", "mark_controls", "method_family", "parse_method", "plot",
           "plot_by_size", "read_csv", "run_sweep", "select_within_budget", "size_breakdown", "with_controls",
           "write_csv", "write_outputs"]
