"""FLOPs vs AUROC trade-off sweep (the paper's Table 1 with AUROC), same as ``latentds sweep``.

    python benchmarks/tradeoff.py                       # reduced CPU config, synthetic task
    python benchmarks/tradeoff.py --budget 0.02         # + cheapest (f, C) within 0.02 AUROC of full size
    python benchmarks/tradeoff.py --paper               # hrnet_w64, 1024², batch 128, 100 epochs (GPU)

Writes tradeoff.md / tradeoff.csv / tradeoff.png under --out (default benchmarks/results).
"""

import sys

from latentds.sweep import main

if __name__ == "__main__":
    sys.exit(main())
