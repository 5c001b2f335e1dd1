"""Peak CPU memory of encoding with the MedVAE 8x1 architecture: SDPA vs naive attention.

The latent-diffusion autoencoder has one self-attention block in its mid block, over
N = (H/f)·(W/f) tokens. Naive attention (diffusers ``AttnProcessor``, like MedVAE's own
``AttnBlock``) materialises the N×N score matrix; PyTorch's scaled-dot-product attention
(diffusers ``AttnProcessor2_0``, what latentds uses) does not.

Every measurement runs in a fresh subprocess: build the model (random weights, seed 0),
warm up on a 64² image, reset the peak-RSS counter, encode one image, and report
peak RSS minus RSS before the encode. At 2048² naive attention needs N = 65,536 tokens,
N²·4 B = 17.2 GB for one fp32 score matrix (diffusers keeps scores and probabilities
alive together, so about twice that) and does not fit in 24 GB; it is reported as (a) the
extrapolation of the measured attention term a·N² and (b) the analytic N²·4 B bound.

    python benchmarks/attention_memory.py                 # the default table (~8 min on 2 cores)
    python benchmarks/attention_memory.py --sizes --tile-size 1024 --tile-overlap 0 --stock-forward

Both columns run latentds' ``KLCodec`` encode (its lean, channels_last forward); only
the attention processor differs. ``--stock-forward`` adds a row with diffusers' own
``Encoder.forward`` for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

GB = 1e9
F = 8
MID_CHANNELS = 512  # ch=128 × ch_mult[-1]=4


# --------------------------------------------------------------------------- worker side


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (Linux: write 5 to clear_refs), so the
    measured peak is that of the encode, not of model construction."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_bytes() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def worker(
    size: int, attn: str, part: str, tile_size: int | None, tile_overlap: int | None, threads: int, stock: bool
) -> dict:
    import torch
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from latentds.codecs import create_codec

    torch.set_num_threads(threads)
    codec = create_codec("medvae-f8c1", weights="random", seed=0, tile_size=tile_size, tile_overlap=tile_overlap)
    model = codec.model  # type: ignore[attr-defined]
    model.set_attn_processor(AttnProcessor() if attn == "naive" else AttnProcessor2_0())
    if stock:
        codec._lean = False  # type: ignore[attr-defined]  # diffusers' Encoder.forward
    codec.encode(torch.rand(1, 1, 64, 64))  # warm-up: lazy allocations, oneDNN primitives

    if part == "encode":
        x = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(0))
        run = lambda: codec.encode(x)
    else:  # the mid-block attention alone, on an input of the shape it sees at this size
        block = model.encoder.mid_block.attentions[0]
        h = torch.randn(1, MID_CHANNELS, size // F, size // F, generator=torch.Generator().manual_seed(0))

        def run() -> object:
            with torch.inference_mode():
                return block(h)

    before_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    reset = _reset_peak()
    baseline = _rss_bytes()
    t0 = time.perf_counter()
    out = run()
    seconds = time.perf_counter() - t0
    peak = _peak_bytes() if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    del out
    return {
        "size": size,
        "attn": attn,
        "part": part,
        "tile_size": tile_size,
        "stock_forward": stock,
        "tokens": (size // F) ** 2,
        "peak_bytes": max(0, peak - baseline),
        "baseline_bytes": baseline,
        "peak_was_reset": reset,
        "maxrss_before_bytes": before_maxrss,
        "seconds": seconds,
        "threads": threads,
    }


# --------------------------------------------------------------------------- driver side


def measure(
    size: int, attn: str, part: str, args: argparse.Namespace, tile: bool = False, stock: bool = False
) -> dict | None:
    cmd = [sys.executable, __file__, "--_worker", "--size", str(size), "--attn", attn, "--part", part]
    cmd += ["--threads", str(args.threads)] + (["--stock"] if stock else [])
    if tile:
        cmd += ["--tile-size", str(args.tile_size)]
        if args.tile_overlap is not None:
            cmd += ["--tile-overlap", str(args.tile_overlap)]
    label = f"{part:9s} {attn:5s} {size}²" + (f" tile {args.tile_size}" if tile else "") + (" stock" if stock else "")
    print(f"  measuring {label} ...", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)  # a failed row is reported, not fatal
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        print(f"  {label}: failed (exit {proc.returncode}; killed for memory?) {' | '.join(tail)}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _total_ram() -> float:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024.0
    return float("nan")


def fit_quadratic(points: list[tuple[int, int]]) -> float:
    """Least-squares a in peak ≈ a·N² (through the origin)."""
    num = sum(n * n * p for n, p in points)
    den = sum(float(n) ** 4 for n, _ in points)
    return num / den


def fmt_gb(b: float | None) -> str:
    return "—" if b is None else f"{b / GB:7.2f} GB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--sizes",
        type=int,
        nargs="*",
        default=[512, 768, 1024],
        help="image sides measured with both naive and SDPA attention (default: 512 768 1024)",
    )
    p.add_argument(
        "--target",
        type=int,
        default=2048,
        help="image side measured with SDPA only; naive is extrapolated (default: 2048)",
    )
    p.add_argument(
        "--tile-size",
        type=int,
        default=None,
        help="also measure a tiled SDPA encode of the target size with this tile (pixels, multiple of 8)",
    )
    p.add_argument("--tile-overlap", type=int, default=None, help="tile overlap in pixels (default: tile/4)")
    p.add_argument(
        "--stock-forward",
        action="store_true",
        help="also measure the target size with diffusers' own Encoder.forward instead of latentds' lean one",
    )
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads per worker")
    p.add_argument("--json", type=Path, default=None, help="also write the raw measurements here")
    p.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--attn", choices=["naive", "sdpa"], help=argparse.SUPPRESS)
    p.add_argument("--part", choices=["encode", "attention"], help=argparse.SUPPRESS)
    p.add_argument("--stock", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args._worker:
        print(
            json.dumps(
                worker(args.size, args.attn, args.part, args.tile_size, args.tile_overlap, args.threads, args.stock)
            )
        )
        return 0
    for s in [*args.sizes, args.target]:
        if s % F:
            p.error(f"sizes must be multiples of {F}, got {s}")

    t_start = time.perf_counter()
    rows: list[dict] = []
    print(
        "MedVAE 8x1 architecture (ch=128, ch_mult 1,2,4,4, in/out 1, z=1, random weights), "
        f"encode 1×1×S×S fp32 on CPU, {args.threads} threads",
        file=sys.stderr,
    )
    for s in args.sizes:
        for attn in ("naive", "sdpa"):
            for part in ("attention", "encode"):
                r = measure(s, attn, part, args)
                if r:
                    rows.append(r)
    for part in ("attention", "encode"):
        r = measure(args.target, "sdpa", part, args)
        if r:
            rows.append(r)
    tiled = measure(args.target, "sdpa", "encode", args, tile=True) if args.tile_size else None
    stock = measure(args.target, "sdpa", "encode", args, stock=True) if args.stock_forward else None

    def get(size: int, attn: str, part: str) -> dict | None:
        return next((r for r in rows if (r["size"], r["attn"], r["part"]) == (size, attn, part)), None)

    naive_attn = [(r["tokens"], r["peak_bytes"]) for r in rows if r["attn"] == "naive" and r["part"] == "attention"]
    a = fit_quadratic(naive_attn) if naive_attn else None
    n_t = (args.target // F) ** 2

    print()
    print(
        f"Peak memory of encoding one S×S image, f=8, MedVAE 8x1 architecture (ch=128, ch_mult 1,2,4,4, z=1), "
        f"fp32, CPU, {args.threads} threads."
    )
    print(
        "Peak = peak RSS during the call − RSS before it, fresh subprocess per row "
        "(model built, warmed up on 64², peak counter reset)."
    )
    print(
        "Both columns use latentds' KLCodec (lean channels_last forward); only the attention processor differs: "
        "naive = diffusers AttnProcessor, SDPA = AttnProcessor2_0."
    )
    print()
    print("Mid-block attention alone (input 1×512×S/8×S/8):")
    print(f"{'S':>6} {'N tokens':>9} {'naive':>11} {'SDPA':>11} {'naive/(N²·4B)':>14} {'SDPA/naive':>11}")
    for s in [*args.sizes, args.target]:
        nv, sd = get(s, "naive", "attention"), get(s, "sdpa", "attention")
        n = (s // F) ** 2
        nv_b = nv["peak_bytes"] if nv else (a * n * n if a else None)
        mark = "" if nv else "*"
        ratio = f"{sd['peak_bytes'] / nv_b:10.1%}" if (sd and nv_b) else "—"
        per = f"{nv_b / (n * n * 4):13.2f}{mark}" if nv_b else "—"
        print(
            f"{s:>6} {n:>9} {fmt_gb(nv_b):>10}{mark:1s} {fmt_gb(sd['peak_bytes'] if sd else None):>11} {per:>14} {ratio:>11}"
        )
    print("  * extrapolated as a·N² from the measured naive rows (not run)")
    print()
    print("Whole encode:")
    print(f"{'S':>6} {'N tokens':>9} {'naive':>11} {'SDPA':>11} {'SDPA/naive':>11} {'t naive':>8} {'t SDPA':>8}")
    for s in args.sizes:
        nv, sd = get(s, "naive", "encode"), get(s, "sdpa", "encode")
        ratio = f"{sd['peak_bytes'] / nv['peak_bytes']:10.1%}" if (nv and sd and nv["peak_bytes"]) else "—"
        tn = f"{nv['seconds']:7.1f}s" if nv else "—"
        ts = f"{sd['seconds']:7.1f}s" if sd else "—"
        print(
            f"{s:>6} {(s // F) ** 2:>9} {fmt_gb(nv and nv['peak_bytes']):>11} {fmt_gb(sd and sd['peak_bytes']):>11} {ratio:>11} {tn:>8} {ts:>8}"
        )
    sd_t = get(args.target, "sdpa", "encode")
    bound = n_t * n_t * 4
    extrap = a * n_t * n_t if a else None
    print(
        f"{args.target:>6} {n_t:>9} {'(see below)':>11} {fmt_gb(sd_t and sd_t['peak_bytes']):>11} {'':>11} {'':>8} "
        f"{(str(round(sd_t['seconds'], 1)) + 's') if sd_t else '—':>8}"
    )
    print()
    if sd_t:
        s_b = sd_t["peak_bytes"]
        print(
            f"At {args.target}² (N = {n_t} tokens) naive attention is not run (this machine has "
            f"{_total_ram() / GB:.0f} GB); estimates:"
        )
        if extrap:
            naive_est = max(extrap, s_b)
            print(
                f"  naive, extrapolated attention term a·N² (a = {a:.2f} B, fitted on the rows above): "
                f"{naive_est / GB:.1f} GB  ->  SDPA/naive = {s_b / naive_est:.1%}"
            )
        naive_lb = max(bound, s_b)
        print(
            f"  naive, analytic lower bound N²·4 B (one fp32 score matrix):         "
            f"{naive_lb / GB:.1f} GB  ->  SDPA/naive ≤ {s_b / naive_lb:.1%}"
        )
        print(f"  SDPA measured: {s_b / GB:.2f} GB in {sd_t['seconds']:.0f} s (goal: ≤ 25 % of naive)")
    if tiled:
        ov = args.tile_overlap if args.tile_overlap is not None else max(F, (args.tile_size // 4) // F * F)
        print(
            f"  SDPA tiled, tile {args.tile_size} overlap {ov}: {tiled['peak_bytes'] / GB:.2f} GB in {tiled['seconds']:.0f} s"
        )
    if stock:
        print(
            f"  SDPA with diffusers' stock Encoder.forward (not latentds' lean forward): "
            f"{stock['peak_bytes'] / GB:.2f} GB in {stock['seconds']:.0f} s"
        )
    print(f"\n(total benchmark time {time.perf_counter() - t_start:.0f} s)")
    if args.json:
        args.json.write_text(
            json.dumps({"rows": rows, "tiled": tiled, "stock": stock, "a_bytes_per_token2": a}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
