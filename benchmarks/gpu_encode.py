"""GPU path, side by side in one run (issue 15, item 4). Needs a CUDA device (``--smoke``: CPU).

1. Encode images/s of ``kl-f8c4`` (the paper's full-size ldm kl-f8 architecture, ch=128,
   ch_mult 1-2-4-4, 1 input channel, C=4) at 1024² and 2048², as latentds runs it
   (``codec.encode``: range check, [0,1]->[-1,1], the lean channels_last forward, posterior
   mean) in fp32 and under bf16 autocast, against the bare forward of the same network with
   the same weights in the reference latent-diffusion layout (diffusers ``AutoencoderKL``,
   ``model.encode(x).latent_dist.mode()``, no latentds code), NCHW and channels_last. All
   variants run interleaved, batch by batch, and medians are reported, so clock or load
   changes hit all of them alike. Peak GPU memory per variant is recorded too.
2. DataLoader-to-GPU throughput of a probe training step (the project's ``ProbeModel``: timm
   resnet18 on 4-channel f=8 latents of 1024×832 images, 4×128×104 float32, AdamW, bf16
   autocast) fed from an ``np.memmap`` file through a DataLoader with pinned memory, per
   sample and batched (a BatchSampler whose index lists become one fancy-index gather), and
   from an in-memory tensor, against the same step on a batch already on the GPU.

Weights are RANDOM (seeded): throughput only, the numbers say nothing about quality. The
CUDA backend flags are left at PyTorch's defaults (what a user gets) and recorded.

Runs without pydicom, fsspec, dask, s3fs, zarr, webdataset or google_crc32c: it loads
``latentds.codecs`` (torch + diffusers only) without running ``latentds/__init__.py`` when the
full package cannot be imported (tests/test_benchmarks_scale.py checks this with those
modules blocked). Must finish in under 3 minutes on an H100/H200 (``--budget-s`` guards it).

    python benchmarks/gpu_encode.py --out gpu_encode.json
    python benchmarks/gpu_encode.py --smoke --out /tmp/gpu_encode_smoke.json   # CPU, tiny sizes
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
T0 = time.perf_counter()

__all__ = ["main"]


# ----------------------------------------------------------------------------- imports


def import_codecs() -> types.ModuleType:
    """``latentds.codecs``, with or without the rest of latentds.

    ``import latentds.codecs`` first runs ``latentds/__init__.py``, which imports the dataset,
    store and bulk modules (pydicom, fsspec, dask...). The GPU machine has none of those, and
    the codecs need only torch and diffusers, so when the full import fails the package is
    replaced by an empty namespace module pointing at the same directory and the codecs
    subpackage is imported on its own: the same files, the same code path."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        return importlib.import_module("latentds.codecs")
    except ImportError as exc:
        for name in [n for n in sys.modules if n == "latentds" or n.startswith("latentds.")]:
            del sys.modules[name]
        pkg = types.ModuleType("latentds")
        pkg.__path__ = [str(ROOT / "latentds")]
        pkg.__file__ = None
        sys.modules["latentds"] = pkg
        mod = importlib.import_module("latentds.codecs")
        mod.__dict__.setdefault("_bench_import_note", f"package __init__ skipped ({exc})")
        return mod


def import_probe_model() -> Any:
    """``latentds/train/probe/model.py`` on its own (it imports only torch and timm; the package
    ``latentds.train.probe`` also imports the Lightning runner and latentds' datasets)."""
    spec = importlib.util.spec_from_file_location("_latentds_probe_model", ROOT / "latentds" / "train" / "probe" / "model.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


# ----------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def over_budget(args: argparse.Namespace) -> bool:
    return time.perf_counter() - T0 > args.budget_s


def interleaved(fns: dict[str, Callable[[], Any]], *, device: torch.device, warmup: int, reps: int,
                args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Warm each variant up (recording its peak memory), then time one call of each variant per
    round, ``reps`` rounds: ``{name: {"times": [...], "peak_gib": ..., "error": ...}}``."""
    out: dict[str, dict[str, Any]] = {name: {"times": [], "peak_gib": None, "error": None} for name in fns}
    for name, fn in fns.items():
        try:
            peak_reset(device)
            for _ in range(warmup):
                fn()
            sync(device)
            out[name]["peak_gib"] = peak_gib(device)
        except Exception as exc:  # e.g. out of memory: record it, measure the other variants
            out[name]["error"] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
            if device.type == "cuda":
                torch.cuda.empty_cache()
    for _ in range(reps):
        if over_budget(args):
            break
        for name, fn in fns.items():
            if out[name]["error"]:
                continue
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            out[name]["times"].append(time.perf_counter() - t)
    return out


# ----------------------------------------------------------------------------- 1. encode


def encode_bench(args: argparse.Namespace, device: torch.device, result: dict[str, Any]) -> None:
    codecs = import_codecs()
    import diffusers
    from diffusers import AutoencoderKL

    result["diffusers"] = diffusers.__version__
    result["codecs_import"] = getattr(codecs, "_bench_import_note", "full latentds package")
    # the paper's full-size architecture; the CPU smoke run only checks the code path, on a small one
    arch = {"block_out_channels": [32, 64, 64, 64], "layers_per_block": 1, "norm_num_groups": 16} if args.smoke else None
    t = time.perf_counter()
    # The same seeded random weights in every variant: create_codec builds the model, the bare
    # copies load its state dict into a fresh diffusers AutoencoderKL (no latentds code on that path).
    c32 = codecs.create_codec("kl-f8c4", weights="random", seed=0, device=device, arch=arch)
    cbf = codecs.create_codec("kl-f8c4", weights="random", seed=0, device=device, autocast="bf16", arch=arch)
    bare = AutoencoderKL(**c32.config)
    bare.load_state_dict(c32.model.state_dict())
    bare = bare.eval().requires_grad_(False).to(device)
    bare_cl = copy.deepcopy(bare).to(memory_format=torch.channels_last)
    # Decoders are not used: drop them from the GPU so every variant has the same free memory.
    for m in (c32.model, cbf.model, bare, bare_cl):
        m.decoder.to("meta")
        if m.post_quant_conv is not None:
            m.post_quant_conv.to("meta")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    result["encode_setup_s"] = round(time.perf_counter() - t, 2)
    n_params = sum(p.numel() for p in bare.encoder.parameters()) + sum(p.numel() for p in bare.quant_conv.parameters())
    result["encoder_params"] = int(n_params)
    result["codec_preprocessing"] = c32.preprocessing
    result["lean_forward"] = bool(c32._lean)

    def bare_fn(model: Any, x: torch.Tensor, bf16: bool) -> Callable[[], Any]:
        def run() -> torch.Tensor:
            with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                return model.encode(x).latent_dist.mode()
        return run

    rows = []
    for size, batch in zip(args.sizes, args.batches):
        if over_budget(args):
            rows.append({"size": size, "batch": batch, "skipped": "time budget"})
            continue
        g = torch.Generator(device="cpu").manual_seed(size)
        x01 = torch.rand(batch, 1, size, size, generator=g).to(device)        # latentds input: [0, 1]
        xm = (x01 * 2 - 1).contiguous()                                       # reference input: [-1, 1]
        xm_cl = xm.contiguous(memory_format=torch.channels_last)
        fns = {
            "latentds fp32": lambda: c32.encode(x01),
            "latentds bf16-autocast": lambda: cbf.encode(x01),
            "bare fp32 NCHW": bare_fn(bare, xm, False),
            "bare bf16-autocast NCHW": bare_fn(bare, xm, True),
            "bare fp32 channels_last": bare_fn(bare_cl, xm_cl, False),
            "bare bf16-autocast channels_last": bare_fn(bare_cl, xm_cl, True),
        }
        # correctness of the comparison: latentds and the bare reference compute the same latent
        with torch.inference_mode():
            a = c32.encode(x01).float()
            b = fns["bare fp32 NCHW"]().float()
            rel = float((a - b).abs().max() / (b.abs().max() + 1e-12))
        res = interleaved(fns, device=device, warmup=args.warmup, reps=args.reps, args=args)
        row: dict[str, Any] = {"size": size, "batch": batch, "max_rel_diff_latentds_vs_bare_fp32": rel, "variants": {}}
        for name, r in res.items():
            med = statistics.median(r["times"]) if r["times"] else None
            row["variants"][name] = {
                "img_per_s": batch / med if med else None, "median_batch_s": med,
                "times_s": [round(v, 5) for v in r["times"]], "peak_gib": r["peak_gib"], "error": r["error"]}
        v = row["variants"]

        def ratio(a_: str, b_: str) -> float | None:
            x_, y_ = v[a_]["img_per_s"], v[b_]["img_per_s"]
            return x_ / y_ if x_ and y_ else None

        row["ratios"] = {
            "fp32: latentds / bare NCHW": ratio("latentds fp32", "bare fp32 NCHW"),
            "fp32: latentds / bare channels_last": ratio("latentds fp32", "bare fp32 channels_last"),
            "bf16: latentds / bare NCHW": ratio("latentds bf16-autocast", "bare bf16-autocast NCHW"),
            "bf16: latentds / bare channels_last": ratio("latentds bf16-autocast", "bare bf16-autocast channels_last"),
            "latentds bf16 / latentds fp32": ratio("latentds bf16-autocast", "latentds fp32"),
        }
        rows.append(row)
        del x01, xm, xm_cl, fns
        peak_reset(device)
    result["encode"] = rows
    del c32, cbf, bare, bare_cl
    peak_reset(device)


# ----------------------------------------------------------------------------- 2. probe step


class MemmapLatents(torch.utils.data.Dataset):
    """f=8 latents in one ``np.memmap`` file (opened lazily in each worker). An int index
    gives one sample (the per-sample path); a list of indices, as a BatchSampler passed as the
    ``sampler`` of a ``batch_size=None`` DataLoader delivers it, gives the whole batch in one
    fancy-index gather (what a batched ``__getitems__`` reader reaches at best)."""

    def __init__(self, path: str, n: int, shape: tuple[int, ...]) -> None:
        self.path, self.n, self.shape = path, n, shape
        self.targets = np.arange(n) % 2
        self._mm: np.memmap | None = None

    def __len__(self) -> int:
        return self.n

    def _arr(self) -> np.memmap:
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=np.float32, mode="r", shape=(self.n, *self.shape))
        return self._mm

    def __getitem__(self, i: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(i, (list, tuple, np.ndarray)):
            idx = np.sort(np.asarray(i))  # sorted: a sequential-ish gather; the batch order is irrelevant here
            return torch.from_numpy(self._arr()[idx]), torch.from_numpy(self.targets[idx])
        return torch.from_numpy(np.array(self._arr()[i])), torch.tensor(int(self.targets[i]))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_mm": None}


def probe_bench(args: argparse.Namespace, device: torch.device, result: dict[str, Any]) -> None:
    pm = import_probe_model()
    shape = tuple(args.latent_shape)
    n, bs = args.probe_n, args.probe_batch
    torch.manual_seed(0)
    model = pm.ProbeModel(args.probe_backbone, shape[0], 2).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    use_bf16 = device.type == "cuda"

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = y.to(device, non_blocking=True).float()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = loss_fn(model(x)[:, 0], y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    tmp = tempfile.mkdtemp(prefix="latentds-gpu-bench-")
    path = os.path.join(tmp, "latents.f32")
    rng = np.random.default_rng(0)
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=(n, *shape))
    for s in range(0, n, 256):
        mm[s:s + 256] = rng.standard_normal((min(256, n - s), *shape), dtype=np.float32)
    mm.flush()
    del mm
    ds = MemmapLatents(path, n, shape)
    in_mem = torch.from_numpy(np.fromfile(path, dtype=np.float32).reshape(n, *shape))
    in_mem_targets = torch.from_numpy(ds.targets)
    result["probe"] = {"backbone": args.probe_backbone, "latent_shape": list(shape), "samples": n, "batch": bs,
                       "workers": args.workers, "steps": args.probe_steps, "bytes_per_sample": int(np.prod(shape)) * 4,
                       "bf16_autocast": use_bf16, "page_cache": "warm (file just written, fits in RAM)", "rates": {}}
    rates = result["probe"]["rates"]

    def rate(loader: Any, steps: int) -> float:
        """Images/s of ``steps`` probe steps fed by ``loader``, epoch after epoch (the first
        batch, which includes worker start-up, is not timed)."""
        def batches() -> Any:
            while True:
                yield from loader
        it = batches()
        x, y = next(it)
        step(x, y)
        sync(device)
        t, seen = time.perf_counter(), 0
        for _ in range(steps):
            if over_budget(args):
                break
            x, y = next(it)
            step(x, y)
            seen += len(y)
        sync(device)
        return seen / (time.perf_counter() - t) if seen else float("nan")

    steps = args.probe_steps
    # GPU-resident: the ceiling (same batch every step, no host work at all)
    xg = in_mem[:bs].to(device)
    yg = in_mem_targets[:bs].to(device)
    for _ in range(3):
        step(xg, yg)
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step(xg, yg)
    sync(device)
    rates["GPU-resident batch (step only)"] = steps * bs / (time.perf_counter() - t)
    del xg, yg

    pin = device.type == "cuda"
    dl = torch.utils.data.DataLoader
    variants = {
        "DataLoader memmap per-sample": lambda: dl(ds, batch_size=bs, shuffle=True, num_workers=args.workers,
                                                   pin_memory=pin, persistent_workers=True, drop_last=True),
        "DataLoader memmap batched gather": lambda: dl(
            ds, batch_size=None, num_workers=args.workers, pin_memory=pin, persistent_workers=True,
            sampler=torch.utils.data.BatchSampler(torch.utils.data.RandomSampler(ds), bs, drop_last=True)),
        "in-memory tensor, main process": lambda: dl(torch.utils.data.TensorDataset(in_mem, in_mem_targets),
                                                     batch_size=bs, shuffle=True, num_workers=0, pin_memory=pin,
                                                     drop_last=True),
    }
    for name, make in variants.items():
        if over_budget(args):
            rates[name] = None
            continue
        rates[name] = rate(make(), steps)
    top = rates["GPU-resident batch (step only)"]
    result["probe"]["ratio_to_gpu_resident"] = {k: (v / top if v and top else None) for k, v in rates.items()}
    os.unlink(path)
    os.rmdir(tmp)


# ----------------------------------------------------------------------------- report


def print_report(r: dict[str, Any]) -> None:
    print(f"\ndevice: {r['device_name']} | torch {r['torch']} | CUDA {r.get('cuda')} | cuDNN {r.get('cudnn')} | "
          f"diffusers {r.get('diffusers')} | python {r['python']}")
    print("weights: RANDOM (seeded), throughput only; backend flags at PyTorch defaults: "
          f"{r['backend_flags']}")
    for row in r.get("encode", []):
        if "skipped" in row:
            print(f"\n{row['size']}²: skipped ({row['skipped']})")
            continue
        print(f"\nkl-f8c4 encode, {row['size']}² x batch {row['batch']} "
              f"(latentds vs bare max rel diff fp32: {row['max_rel_diff_latentds_vs_bare_fp32']:.2e})")
        print(f"  {'variant':36s} {'img/s':>9s} {'batch s':>9s} {'peak GiB':>9s}")
        for name, v in row["variants"].items():
            if v["error"]:
                print(f"  {name:36s} {v['error']}")
                continue
            ips = f"{v['img_per_s']:9.2f}" if v["img_per_s"] else "      n/a"
            bs_ = f"{v['median_batch_s']:9.4f}" if v["median_batch_s"] else "      n/a"
            pk = f"{v['peak_gib']:9.2f}" if v["peak_gib"] is not None else "        -"
            print(f"  {name:36s} {ips} {bs_} {pk}")
        for k, v in row["ratios"].items():
            print(f"  ratio {k:40s} {v:6.3f}" if v else f"  ratio {k:40s}    n/a")
    p = r.get("probe")
    if p:
        print(f"\nprobe step ({p['backbone']}, AdamW, bf16 autocast={p['bf16_autocast']}) on f=8 latents "
              f"{'x'.join(map(str, p['latent_shape']))} float32, batch {p['batch']}, {p['samples']} samples, "
              f"{p['workers']} workers, pinned memory, {p['steps']} timed steps each")
        for k, v in p["rates"].items():
            ratio = p["ratio_to_gpu_resident"].get(k)
            vs = f"{v:10.1f} img/s" if v else "       n/a"
            print(f"  {k:36s} {vs}   {ratio:6.3f} of GPU-resident" if ratio else f"  {k:36s} {vs}")
    for e in r.get("errors", []):
        print(f"\nERROR in {e['part']}: {e['error']}")
    print(f"\nwall time {r['wall_s']:.1f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="gpu_encode.json", help="JSON file to write")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: checks the script runs, measures nothing")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 2])
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--latent-shape", type=int, nargs=3, default=[4, 128, 104])
    ap.add_argument("--probe-n", type=int, default=6144)
    ap.add_argument("--probe-batch", type=int, default=128)
    ap.add_argument("--probe-steps", type=int, default=100, help="timed steps per variant (epochs repeat)")
    ap.add_argument("--probe-backbone", default="resnet18")
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--budget-s", type=float, default=150.0,
                    help="stop starting new measurements after this many seconds (keeps the run under 3 min)")
    ap.add_argument("--skip", choices=["encode", "probe"], action="append", default=[])
    args = ap.parse_args(argv)
    if args.smoke:
        args.sizes, args.batches, args.warmup, args.reps = [64], [1], 1, 1
        args.latent_shape, args.probe_n, args.probe_batch, args.workers = [4, 16, 13], 48, 16, 1
        args.probe_backbone, args.probe_steps = "small-cnn", 4
    if len(args.batches) != len(args.sizes):
        ap.error("--batches needs one value per --sizes value")
    if not torch.cuda.is_available() and not args.smoke:
        print("no CUDA device: this benchmark measures the GPU path; use --smoke for a CPU check", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    result: dict[str, Any] = {
        "benchmark": "gpu_encode", "smoke": args.smoke, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(), "numpy": np.__version__, "cpu_count": os.cpu_count(),
        "weights": "random (seed 0): throughput only",
        "backend_flags": {"cudnn.benchmark": torch.backends.cudnn.benchmark,
                          "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
                          "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32},
        "args": vars(args), "errors": [],
    }
    if device.type == "cuda":
        result["device_total_gib"] = torch.cuda.get_device_properties(device).total_memory / 2**30
    for part, fn in (("encode", encode_bench), ("probe", probe_bench)):
        if part in args.skip:
            continue
        try:
            fn(args, device, result)
        except Exception as exc:  # record and go on: one broken part must not lose the other's numbers
            result["errors"].append({"part": part, "error": f"{type(exc).__name__}: {exc}",
                                     "traceback": traceback.format_exc()})
    result["wall_s"] = time.perf_counter() - T0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print_report(result)
    print(f"wrote {out}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
