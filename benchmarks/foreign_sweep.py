"""The sweep on the foreign task (``benchmarks/foreign_task.py``) with AUROC by speck level.

``latentds sweep --data-root TASK`` runs the same rows; a foreign task has no ``findings.csv``,
so the sweep gives no size breakdown. This wrapper reads the diameters the generator recorded
in ``TASK/labels.csv`` and bins them by the generator's levels, to show which f erases which
level (issue 12, benchmarks/RESULTS.md). Same ``run_sweep``, same probe, same defaults.

    python benchmarks/foreign_sweep.py TASK --workdir W --seeds 0 1 \
        --methods "full size" bicubic-f4 bicubic-f8 bicubic-f16 [--size 128 128]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib.util
import time
from pathlib import Path

import latentds.sweep.run as sweep_run
from latentds.sweep import REDUCED, write_outputs


def _levels() -> tuple[tuple[float, float], ...]:
    spec = importlib.util.spec_from_file_location("foreign_task", Path(__file__).with_name("foreign_task.py"))
    ft = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ft)  # type: ignore[union-attr]
    return ft.LEVELS


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("task")
    p.add_argument("--workdir", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=list(REDUCED.seeds))
    p.add_argument("--methods", nargs="+", required=True)
    p.add_argument("--size", type=int, nargs=2, default=(128, 128))
    p.add_argument("--views", type=int, default=1)
    a = p.parse_args(argv)
    task = Path(a.task)
    diam = {r["path"]: float(r["diameter_px"]) for r in csv.DictReader(open(task / "labels.csv"))}

    def sizes(root: Path, ds) -> list[float]:
        return [diam[Path(q).resolve().relative_to(root.resolve()).as_posix()] for q, _ in ds.samples]

    # the sweep's size breakdown, fed from labels.csv and binned by the generator's levels
    sweep_run._finding_sizes = sizes
    sweep_run.SIZE_BINS = tuple((lo - 0.01, hi + 0.01) for lo, hi in _levels())
    cfg = dataclasses.replace(REDUCED, workdir=a.workdir, out=str(Path(a.workdir) / "out"), data_root=str(task),
                              shape=tuple(a.size), seeds=tuple(a.seeds), methods=tuple(a.methods), controls=False,
                              budget=0.02, views=a.views)
    breakdown: list = []
    t0 = time.time()

    def log(*msg) -> None:
        print(f"[{time.strftime('%H:%M:%S')}]", *msg, flush=True)

    rows = sweep_run.run_sweep(cfg, log=log, breakdown=breakdown,
                               on_row=lambda done: write_outputs(done, cfg, breakdown=breakdown))
    for b in breakdown:
        print("AUROC by level", b.method, " ".join(f"{lab}: {x:.3f} (n={n})" for lab, x, n in
                                                  zip(b.bins, b.auroc, b.n_pos)), flush=True)
    for r in rows:
        print(f"{r.method}: {r.auroc:.3f} ({r.ci_lo:.3f}-{r.ci_hi:.3f}) seeds {r.aurocs} {r.seconds:.0f} s")
    print(f"total {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
