"""Sweep f and C: which compression can this task afford? (The paper's Table 1 trade-off.)

    python examples/sweep.py                     # SYNTHETIC task, reduced CPU config (minutes)
    python examples/sweep.py --paper             # hrnet_w64, 1024², batch 128, 100 epochs (GPU)

Same as ``latentds sweep``; this shows the Python API: pick methods, run, write the table and
plot, and ask for the cheapest (f, C) within an AUROC budget of full size.
"""

from __future__ import annotations

import argparse
import dataclasses


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--paper", action="store_true", help="the paper's configuration (needs a GPU)")
    p.add_argument("--out", default="sweep-results")
    p.add_argument("--workdir", default="latentds-sweep")
    p.add_argument("--budget", type=float, default=0.02, help="allowed AUROC drop from full size")
    p.add_argument("--data-root", default=None, help="your own ImageFolder-style task (default: synthetic)")
    args = p.parse_args(argv)

    from latentds.sweep import PAPER, REDUCED, available_methods, run_sweep, select_within_budget, write_outputs

    methods = available_methods()   # full size, bicubic f4/f8/f16, + every codec whose weights load locally
    cfg = dataclasses.replace(PAPER if args.paper else REDUCED, out=args.out, workdir=args.workdir,
                              data_root=args.data_root, budget=args.budget, methods=tuple(methods))
    rows = run_sweep(cfg)
    paths = write_outputs(rows, cfg)
    best = select_within_budget(rows, args.budget)
    print(paths["md"].read_text())
    print(f"cheapest within {args.budget} AUROC of full size: {best.method} (f={best.f}, C={best.C}, "
          f"{best.gmacs:.4g} GMACs vs {rows[0].gmacs:.4g} at full size)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
