"""Train the six shipped residual-s2d KL codecs (kl-f4c1, f4c4, f8c1, f8c4, f16c1, f16c16)
in one command, on one GPU, within a wall-clock budget (issue 13).

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl
    PYTHONPATH=/tmp/site:. python3 latentds/train/vae/train_six.py --data .gpu/data/six.npz \\
        --out OUT --device cuda --budget-s 420

Writes, flat into ``--out``: ``kl-f{f}c{C}.safetensors`` (save_kl_codec format, fp16
tensors, residual-s2d with the guard α) + ``kl-f{f}c{C}.json`` (model card) per codec,
and ``train_log.json`` (card, seconds, steps, final losses, validation PSNR vs s2d).

Deliberately plain PyTorch: the GPU machine has torch, numpy, safetensors and the
diffusers wheel, but no Lightning, pydicom, pyarrow or fsspec. latentds' package
``__init__`` imports the dataset / store stack (fsspec, pyarrow), so this script
registers a bare ``latentds`` package object and imports only ``latentds.codecs.*``
(torch + diffusers) from the source tree -- the same s2d, residual model and export
code as the library, not a copy. Data: ``latentds/train/vae/prepare_six_data.py`` (run where
latentds is fully installed).

Objective per step (images in [0, 1]): ``L1(x, x̂) + hf·L1(HP(x), HP(x̂)) + kl·KL/npix``
with ``HP(x) = x − G_1.0 * x`` (the detail bicubic removes), hf = 2, kl = 1e-6; with
``--edge-weight w`` both L1 terms are weighted per pixel by ``1 + w·min(|HP(x)|/mean, 8)``
(normalised to mean 1), so specks, lines and edges count more than flat background (ldm's
weight relative to a per-pixel sum). Adam (0.9, 0.99), lr 1e-3 with 50 warm-up steps and
a cosine decay over the codec's time slice, bf16 autocast for the correction networks on
CUDA (the s2d baseline and the losses stay float32).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "CH_MULT", "Data", "main", "model_config", "pad", "PAIRS", "psnr", "ROOT", "roundtrip", "SHARE",
    "train_one",
]

ROOT = Path(__file__).resolve().parents[3]


def _import_codecs():
    """latentds.codecs without latentds/__init__ (see the module docstring)."""
    if "latentds" not in sys.modules:
        pkg = types.ModuleType("latentds")
        pkg.__path__ = [str(ROOT / "latentds")]  # type: ignore[attr-defined]
        sys.modules["latentds"] = pkg
    import latentds.codecs.build as build
    import latentds.codecs.codec_file as codec_file
    import latentds.codecs.residual as residual
    import latentds.codecs.s2d as s2d

    # One handle for the KL helpers this script uses (model building and the codec file).
    kl = types.SimpleNamespace(
        ldm_config=build.ldm_config, build_model=build.build_model, save_kl_codec=codec_file.save_kl_codec
    )
    return kl, residual, s2d


PAIRS = [(4, 1), (4, 4), (8, 1), (8, 4), (16, 1), (16, 16)]
#: Share of the budget per codec: f4 models run their first level at full resolution on
#: the most pixels per latent; f16 has the deepest stack. Sums to 1.
SHARE = {(4, 1): 0.18, (4, 4): 0.18, (8, 1): 0.16, (8, 4): 0.16, (16, 1): 0.16, (16, 16): 0.16}
CH_MULT = {4: (1, 2, 2), 8: (1, 2, 2, 2), 16: (1, 1, 2, 2, 2)}


def model_config(kl, f: int, c: int, width: int, layers: int) -> dict:
    cfg = kl.ldm_config(f, c, 1, ch=width)
    cfg["block_out_channels"] = [width * m for m in CH_MULT[f]]
    cfg["layers_per_block"] = layers
    cfg["norm_num_groups"] = min(16, width)
    # No mid-block self-attention: the correction is local detail, and attention costs
    # O(pixels²) at inference (a 768² image at f=4 is 35k tokens: ~5 GB per attention map
    # on CPU); without it the codec is fully convolutional and tiles exactly.
    cfg["mid_block_add_attention"] = False
    return cfg


# --------------------------------------------------------------------------- data


class Data:
    def __init__(self, path: str, device: torch.device, val_crop: int = 0) -> None:
        z = np.load(path, allow_pickle=False)
        keys = sorted(z.files)
        self.train = [torch.from_numpy(z[k].astype(np.float32)).to(device) for k in keys if k.startswith("train_0")]
        # Finding masks of the positive phantoms (data files from before they existed have
        # none: every mask is then None and the finding options have nothing to act on).
        self.masks = [torch.from_numpy(z[f"train_mask_{k[len('train_'):]}"].astype(np.bool_)).to(device)
                      if f"train_mask_{k[len('train_'):]}" in z.files else None
                      for k in keys if k.startswith("train_0")]
        self.with_finding = [i for i, m in enumerate(self.masks) if m is not None and bool(m.any())]
        w = torch.as_tensor(z["train_weight"], dtype=torch.float64)
        self.p = (w / w.sum()).tolist()
        self.val = [torch.from_numpy(z[k].astype(np.float32))[None, None].to(device) for k in keys if k.startswith("val_0")]
        self.pairs = []
        for k in keys:
            if k.startswith("pair_pos_"):
                i = k[len("pair_pos_"):]
                pos = torch.from_numpy(z[k].astype(np.float32))[None, None].to(device)
                neg = torch.from_numpy(z[f"pair_neg_{i}"].astype(np.float32))[None, None].to(device)
                y0, y1, x0, x1 = (int(v) for v in z[f"pair_box_{i}"])
                mask = torch.zeros_like(pos, dtype=torch.bool)
                mask[..., y0:y1, x0:x1] = True
                self.pairs.append((pos, neg, mask))
        if val_crop:
            # CPU runs: centre crops of the validation images, and windows around each
            # finding, so the α guard costs seconds, not minutes (a multiple of 16 keeps
            # every f's grid aligned with the full image's).
            c = val_crop
            self.val = [v[..., max(0, v.shape[-2] - c) // 2 // 16 * 16:, max(0, v.shape[-1] - c) // 2 // 16 * 16:]
                        [..., :c, :c] for v in self.val]
            cropped = []
            for pos, neg, mask in self.pairs:
                ys, xs = torch.nonzero(mask[0, 0], as_tuple=True)
                cy, cx = int(ys.float().mean()), int(xs.float().mean())
                y0 = max(0, min(pos.shape[-2] - c, cy - c // 2)) // 16 * 16
                x0 = max(0, min(pos.shape[-1] - c, cx - c // 2)) // 16 * 16
                sl = (..., slice(y0, y0 + c), slice(x0, x0 + c))
                cropped.append((pos[sl], neg[sl], mask[sl]))
            self.pairs = cropped
        self.info = json.loads(str(z["info_json"])) if "info_json" in z.files else {}
        self.device = device

    def batch(self, rng: np.random.Generator, n: int, crop: int, finding_crop: float = 0.0,
              masks: list | None = None) -> torch.Tensor:
        """Random crops (padded by replication where an image is smaller), hflip, and the
        intensity augmentation of the shipped configs (invert, gamma, a saturating window).

        ``finding_crop`` > 0: that share of the crops is centred (±crop/4) on a random finding
        pixel of a positive phantom -- a finding covers ~0.1 % of a phantom, so uniform crops
        almost never show the model what it must keep. ``masks``: a list that receives each
        crop's finding mask (bool, same geometry), for ``--finding-weight``."""
        idx = rng.choice(len(self.train), size=n, p=self.p)
        out = []
        for j, i in enumerate(idx):
            centred = bool(finding_crop > 0 and self.with_finding and rng.random() < finding_crop)
            if centred:
                i = self.with_finding[int(rng.integers(0, len(self.with_finding)))]
            img = self.train[int(i)]
            m = self.masks[int(i)]
            h, w = img.shape
            if h < crop or w < crop:
                img = F.pad(img[None, None], (0, max(0, crop - w), 0, max(0, crop - h)), mode="replicate")[0, 0]
                if m is not None:
                    m = F.pad(m[None, None].float(), (0, max(0, crop - w), 0, max(0, crop - h)))[0, 0].bool()
                h, w = img.shape
            if centred:
                ys, xs = torch.nonzero(m, as_tuple=True)
                k = int(rng.integers(0, ys.numel()))
                jy, jx = (int(v) for v in rng.integers(-(crop // 4), crop // 4 + 1, size=2))
                y = min(max(0, int(ys[k]) - crop // 2 + jy), h - crop)
                x = min(max(0, int(xs[k]) - crop // 2 + jx), w - crop)
            else:
                y, x = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
            t = img[y:y + crop, x:x + crop]
            tm = m[y:y + crop, x:x + crop] if m is not None else torch.zeros_like(t, dtype=torch.bool)
            if rng.random() < 0.5:
                t = t.flip(-1)
                tm = tm.flip(-1)
            if masks is not None:
                masks.append(tm)
            if rng.random() < 0.3:
                t = 1.0 - t
            g = float(rng.uniform(0.6, 1.6))
            t = t.clamp(0, 1) ** g
            if rng.random() < 0.3:
                width = float(rng.uniform(0.4, 1.0))
                lo = float(rng.uniform(0.0, 1.0 - width))
                t = ((t - lo) / width).clamp(0, 1)
            out.append(t)
        return torch.stack(out)[:, None].contiguous()


# --------------------------------------------------------------------------- metrics


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return 10.0 * math.log10(1.0 / max(mse, 1e-20))


def pad(x: torch.Tensor, f: int) -> torch.Tensor:
    ph, pw = (-x.shape[-2]) % f, (-x.shape[-1]) % f
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x


@torch.no_grad()
def roundtrip(model, x: torch.Tensor, f: int) -> torch.Tensor:
    xp = pad(x, f)
    z = model.moments01(xp)[:, : model.latent_channels]
    return model.decode01(z).clamp(0, 1)[..., : x.shape[-2], : x.shape[-1]]


# --------------------------------------------------------------------------- training


def train_one(kl, residual, data: Data, f: int, c: int, seconds: float, args, log) -> dict:
    dev = data.device
    name = f"kl-f{f}c{c}"
    cfg = model_config(kl, f, c, args.width, args.layers)
    vae = kl.build_model(cfg, seed=args.seed, where=name)
    model = residual.ResidualS2DAutoencoder(vae, f, c).to(dev).train()
    if args.init_from:
        # Fine-tuning: start from an exported codec of the same pair (e.g. the shipped one),
        # not from the exact-s2d zero init. Its config must be the one built here.
        from safetensors import safe_open

        src = Path(args.init_from) / f"{name}.safetensors"
        with safe_open(str(src), framework="pt") as fh:
            meta = fh.metadata() or {}
            sd = {k: fh.get_tensor(k).float() for k in fh.keys()}
        got = json.loads(meta.get("config", "{}"))
        want = {k: v for k, v in cfg.items()}
        diff = sorted(k for k in ("block_out_channels", "layers_per_block", "latent_channels") if got.get(k) != want.get(k))
        if diff:
            raise SystemExit(f"train_six: {src} has another architecture ({', '.join(diff)} differ); "
                             "pass the --width/--layers it was trained with")
        model.load_state_dict(sd)
        log(f"{name}: initialised from {src} (its alpha {meta.get('latentds_residual_alpha')} is re-chosen after training)")
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.99))
    crop = args.crop16 if f == 16 else args.crop
    bs = args.batch16 if f == 16 else args.batch
    rng = np.random.default_rng(args.seed + 97 * f + c)
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    amp = dev.type == "cuda"
    t0 = time.perf_counter()
    step, hist = 0, []
    while True:
        el = time.perf_counter() - t0
        if el >= seconds or (args.max_steps and step >= args.max_steps):
            break
        frac = min(1.0, el / seconds)
        lr = args.lr * min(1.0, (step + 1) / 50) * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        crop_masks: list[torch.Tensor] | None = [] if args.finding_weight > 0 else None
        x = data.batch(rng, bs, crop, args.finding_crop, crop_masks)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
            mom = model.moments01(x)
            mean, logvar = torch.chunk(mom.float(), 2, dim=1)
            logvar = logvar.clamp(-30.0, 20.0)
            std = torch.exp(0.5 * logvar)
            z = mean + std * torch.randn(mean.shape, device=dev, generator=gen)
            xr = model.decode01(z)
        xr = xr.float()
        hpx = residual.high_pass(x, args.hf_sigma)
        if args.edge_weight > 0:
            # Edge/speck weighting: pixels with much of the detail bicubic removes (small
            # bright structures, lines, edges) count up to 1 + 8·w times the flat background,
            # normalised to mean 1 so the loss scale (and the lr) stay comparable.
            e = hpx.abs()
            wpix = 1.0 + args.edge_weight * (e / (e.mean(dim=(1, 2, 3), keepdim=True) + 1e-4)).clamp(max=8.0)
            wpix = wpix / wpix.mean(dim=(1, 2, 3), keepdim=True)
        else:
            wpix = torch.ones_like(x)
        if crop_masks is not None:
            # Finding weighting: the finding's pixels (and 2 px around them) count 1 + w times,
            # renormalised to mean 1 per crop, so a crop with a finding spends a fixed share of
            # its loss there however small the finding is.
            fm = torch.stack(crop_masks)[:, None].to(x.dtype)
            wpix = wpix * (1.0 + args.finding_weight * fm)
            wpix = wpix / wpix.mean(dim=(1, 2, 3), keepdim=True)
        l1 = ((x - xr).abs() * wpix).mean()
        hf = ((hpx - residual.high_pass(xr, args.hf_sigma)).abs() * wpix).mean()
        klv = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum() / x.numel()
        loss = l1 + args.hf_weight * hf + args.kl_weight * klv
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 50 == 0 or step == 1:
            hist.append({"step": step, "t": round(time.perf_counter() - t0, 1), "loss": float(loss.detach()),
                         "l1": float(l1.detach()), "hf_l1": float(hf.detach()), "kl": float(klv.detach())})
            if step % 500 == 0:
                log(f"{name}: step {step} {hist[-1]}")
    if dev.type == "cuda":
        torch.cuda.synchronize()
    train_s = time.perf_counter() - t0
    final = {"loss": float(loss.detach()), "l1": float(l1.detach()), "hf_l1": float(hf.detach()), "kl": float(klv.detach())} if step else {}

    # Round the weights to what ships (fp16 tensors) before the guard looks at them.
    model.eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())

    def rt(x: torch.Tensor, alpha: float) -> torch.Tensor:
        model.alpha = alpha
        return roundtrip(model, x, f)

    grid = [i / (args.alpha_grid - 1) for i in range(args.alpha_grid)]
    log(f"{name}: {step} steps in {train_s:.1f} s; choosing alpha on validation")
    alpha, report = residual.choose_alpha(rt, data.val, pairs=data.pairs, grid=grid)
    model.alpha = alpha
    val = {
        "psnr_codec": [round(psnr(x, rt(x, alpha)), 3) for x in data.val],
        "psnr_s2d": [round(psnr(x, rt(x, 0.0)), 3) for x in data.val],
        "psnr_alpha1": [round(psnr(x, rt(x, 1.0)), 3) for x in data.val],
    }
    val["mean_gain_db"] = round(float(np.mean(np.subtract(val["psnr_codec"], val["psnr_s2d"]))), 3)
    val["mean_gain_alpha1_db"] = round(float(np.mean(np.subtract(val["psnr_alpha1"], val["psnr_s2d"]))), 3)
    model.alpha = alpha
    return {"name": name, "f": f, "C": c, "model": model, "alpha": alpha, "steps": step, "train_seconds": round(train_s, 1),
            "params": n_params, "config": cfg, "final_losses": final, "val": val, "alpha_grid": report["grid"],
            "history": hist, "crop": crop, "batch": bs}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the .npz written by latentds/train/vae/prepare_six_data.py")
    p.add_argument("--out", required=True, help="output folder (flat)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--budget-s", type=float, default=420.0, help="training seconds for all six together")
    p.add_argument("--only", default=None, help="comma-separated subset, e.g. f4c4,f8c4")
    p.add_argument("--width", type=int, default=32, help="ldm ch (channels of the first level)")
    p.add_argument("--layers", type=int, default=1, help="ResNet blocks per level")
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--crop16", type=int, default=256, help="crop for f=16 (an 8x8 latent at 128 is too little context)")
    p.add_argument("--batch16", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hf-weight", type=float, default=2.0)
    p.add_argument("--hf-sigma", type=float, default=1.0)
    p.add_argument("--kl-weight", type=float, default=1e-6)
    p.add_argument("--edge-weight", type=float, default=0.0,
                   help="weight L1 and high-pass L1 per pixel by 1 + w·min(|HP(x)|/mean|HP(x)|, 8), "
                        "normalised to mean 1 (0: unweighted)")
    p.add_argument("--finding-weight", type=float, default=0.0,
                   help="weight finding pixels (train_mask_* of the data file, positive phantoms) 1 + w times "
                        "in both L1 terms, renormalised per crop (0: off)")
    p.add_argument("--finding-crop", type=float, default=0.0,
                   help="share of crops centred on a finding of a positive phantom (0: uniform crops)")
    p.add_argument("--init-from", default=None,
                   help="folder with kl-f{f}c{C}.safetensors to fine-tune from (e.g. latentds/weights)")
    p.add_argument("--max-steps", type=int, default=0, help="also stop each codec after this many steps (0: time only)")
    p.add_argument("--alpha-grid", type=int, default=21, help="alpha candidates: N evenly spaced in [0, 1]")
    p.add_argument("--val-crop", type=int, default=0, help="crop validation images / finding windows to N px (CPU)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    wall0 = time.perf_counter()
    kl, residual, _ = _import_codecs()
    try:  # fail in seconds, not after loading data, if the diffusers wheel cannot import here
        from diffusers import AutoencoderKL  # noqa: F401
    except Exception as exc:
        print(f"train_six: cannot import diffusers ({type(exc).__name__}: {exc}); install the wheels in .gpu/whl "
              "with pip --target and put that folder on PYTHONPATH", file=sys.stderr)
        return 3
    dev = torch.device(a.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        card = torch.cuda.get_device_name(dev)
    else:
        import platform

        card = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def log(msg: str) -> None:
        line = f"[{time.perf_counter() - wall0:7.1f}s] {msg}"
        print(line, flush=True)
        lines.append(line)

    data = Data(a.data, dev, a.val_crop)
    log(f"device {card}; {len(data.train)} training images, {len(data.val)} validation images, {len(data.pairs)} finding pairs")
    pairs = PAIRS
    if a.only:
        want = {s.strip() for s in a.only.split(",")}
        pairs = [(f, c) for f, c in PAIRS if f"f{f}c{c}" in want]
    share = sum(SHARE[pc] for pc in pairs)
    results = []
    for f, c in pairs:
        r = train_one(kl, residual, data, f, c, a.budget_s * SHARE[(f, c)] / share, a, log)
        name = r["name"]
        wpath = out / f"{name}.safetensors"
        kl.save_kl_codec(r["model"], wpath, name=name, alpha=r["alpha"], tensor_dtype="fp16")
        card_json = {
            "name": name, "f": f, "C": c, "architecture": "residual-s2d", "base": f"s2d-f{f}c{c}",
            "alpha": r["alpha"], "params": r["params"], "weights_bytes": wpath.stat().st_size, "tensor_dtype": "fp16",
            "trained_on": card, "train_seconds": r["train_seconds"], "steps": r["steps"],
            "batch": r["batch"], "crop": r["crop"],
            "objective": f"L1 + {a.hf_weight}*L1(high-pass sigma={a.hf_sigma}) + {a.kl_weight}*KL (per pixel); "
                         + (f"both L1 terms weighted per pixel by 1 + {a.edge_weight}*min(|HP(x)|/mean|HP(x)|, 8), "
                            "normalised to mean 1; " if a.edge_weight > 0 else "")
                         + (f"finding pixels (2 px-dilated phantom finding masks) weighted 1 + {a.finding_weight}, "
                            "renormalised per crop; " if a.finding_weight > 0 else "")
                         + (f"{a.finding_crop:.0%} of crops centred on a finding; " if a.finding_crop > 0 else "")
                         + (f"fine-tuned from {a.init_from}; " if a.init_from else "")
                         + "perceptual and adversarial terms off",
            "optimizer": f"Adam(0.9, 0.99), lr {a.lr}, 50 warm-up steps, cosine over the time slice, grad-norm clip 1",
            "data": data.info.get("train", []),
            "validation": {"images": data.info.get("val", []), "finding_pairs": len(data.pairs),
                           "crop": a.val_crop or None, **r["val"]},
            "alpha_rule": f"largest mean PSNR + finding-region gain over s2d among {a.alpha_grid} alphas in [0, 1] that is "
                          "never worse than s2d on any validation image or finding pair (alpha=0 is exactly s2d)",
            "held_out": data.info.get("held_out", []),
            "not_clinical": "SYNTHETIC phantoms and public pydicom-data test images; not a clinical model",
            "config": r["config"],
        }
        (out / f"{name}.json").write_text(json.dumps(card_json, indent=2))
        log(f"{name}: {r['steps']} steps in {r['train_seconds']} s, alpha {r['alpha']}, val gain "
            f"{r['val']['mean_gain_db']} dB (alpha=1: {r['val']['mean_gain_alpha1_db']}), {wpath.stat().st_size} bytes")
        results.append({k: v for k, v in r.items() if k not in ("model",)})
        del r
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    total = sum((out / f"{r['name']}.safetensors").stat().st_size for r in results)
    train_log = {
        "card": card, "device": str(dev), "torch": torch.__version__, "budget_s": a.budget_s,
        "wall_seconds": round(time.perf_counter() - wall0, 1), "weights_bytes_total": total,
        "args": vars(a), "codecs": results, "log": lines,
    }
    (out / "train_log.json").write_text(json.dumps(train_log, indent=2))
    log(f"done: {len(results)} codecs, {total / 1e6:.1f} MB of weights, wall {train_log['wall_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
