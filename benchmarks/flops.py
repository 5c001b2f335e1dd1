"""Print the FLOPS column of the paper's Table 1 beside the paper's figures.

Each row is the GMACs (10^9 multiply-accumulates) of ``timm`` ``hrnet_w64`` with one output
class and ``in_chans=C`` on one ``1024/f`` square input, counted with the rule in
``latentds.flops`` (default ``fvcore-train``: convolution / matmul MACs + batch norm at 5 per
element + nearest upsampling at 1 per output element + average pooling at 1 per input
element; see docs/flops.md). The count runs on the meta device: no arithmetic, a few seconds
for all 13 rows on a laptop CPU.

    python benchmarks/flops.py                     # the paper's rule, markdown table
    python benchmarks/flops.py --rule conv-only    # torch.utils.flop_counter alone
    python benchmarks/flops.py --check             # exit 1 if a row is off by more than 0.1 %
"""

from __future__ import annotations

import argparse
import sys
import time

from latentds.flops import PAPER_RULE, RULES, table1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Table 1 FLOPS column: GMACs of timm hrnet_w64 (1 class, in_chans=C) at input "
                    "image_size/f, measured with a counting rule, beside the paper's figures.",
        epilog="Rules: conv-only = torch.utils.flop_counter's built-in formulas; fvcore = fvcore's "
               "formulas, batch norm as the model's mode says; fvcore-train / fvcore-eval = batch "
               f"norm always counted as in train (5/element) / eval (2/element) mode. "
               f"The paper's figures are reproduced by {PAPER_RULE!r} (the default).")
    parser.add_argument("--rule", choices=RULES, default=PAPER_RULE, help="counting rule (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=1024,
                        help="full-size side in pixels (default: %(default)s, the paper's; the relative "
                             "difference to the paper only means something at 1024)")
    parser.add_argument("--model", default="hrnet_w64", help="timm model name (default: %(default)s)")
    parser.add_argument("--tolerance", type=float, default=0.1,
                        help="tolerance in percent for --check (default: %(default)s)")
    parser.add_argument("--check", action="store_true",
                        help="exit with status 1 if any row's |relative diff| exceeds --tolerance")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    rows = table1(rule=args.rule, image_size=args.image_size, model_name=args.model)
    elapsed = time.perf_counter() - t0

    print(f"Table 1 FLOPS column: {args.model}, 1 output class, in_chans=C, input {args.image_size}/f square; "
          f"rule {args.rule!r}; GMACs\n")
    print("| row | method | f | C | input | GMACs measured | paper | relative diff |")
    print("|---:|---|---:|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['row']} | {r['method']} | {r['f']} | {r['C']} | {r['input']}×{r['input']} | "
              f"{r['gmacs']:.4f} | {r['paper']:.2f} | {100 * r['rel_diff']:+.3f} % |")
    worst = max(rows, key=lambda r: abs(r["rel_diff"]))
    ok = abs(worst["rel_diff"]) * 100 <= args.tolerance
    print(f"\nmax |relative diff|: {100 * abs(worst['rel_diff']):.3f} % (row {worst['row']}; "
          f"tolerance {args.tolerance} %: {'within' if ok else 'EXCEEDED'}); counted in {elapsed:.1f} s")
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
