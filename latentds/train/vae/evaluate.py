"""Reconstruction fidelity of a KL codec against bicubic at the same compression ratio.

    python -m latentds.train.vae.evaluate --codec latentds/weights/kl-f8c4.safetensors [--json out.json]

γ = f² / C values per pixel; the bicubic baseline downsizes by s = sqrt(γ) per side with
antialiased bicubic and upsizes with bicubic -- the same operations as latentds'
``bicubic-f{s}`` codecs (s = 2 for γ = 4 is computed here, latentds registers s ≥ 4).

Test data (none of it used in training by the shipped defaults' configs):
* real: pydicom-data ``RG3_UNCR.dcm`` (CR, 1760², a patient not in training), latentds
  preprocessing, at 512 px longest side (the training scale) and at full resolution;
* synthetic: SYNTHETIC phantoms (seeds 10_000+, 512×416) with findings (calcification
  clusters, hairline fractures). Besides whole-image PSNR, "finding PSNR" compares the
  reconstructed finding signal rec(positive) − rec(negative) with the true one
  (positive − negative of the same seed: the images differ only at the finding), in dB
  relative to the [0, 1] range over the finding's bounding box (8 px margin).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["bicubic_roundtrip", "codec_roundtrip", "evaluate", "finding_psnr", "main"]


def bicubic_roundtrip(x: torch.Tensor, s: int) -> torch.Tensor:
    h, w = x.shape[-2], x.shape[-1]
    ph, pw = (-h) % s, (-w) % s
    xp = F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
    z = F.interpolate(xp, size=(xp.shape[-2] // s, xp.shape[-1] // s), mode="bicubic", align_corners=False, antialias=True)
    y = F.interpolate(z, size=xp.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1)
    return y[..., :h, :w]


def codec_roundtrip(codec: Any, x: torch.Tensor) -> torch.Tensor:
    y = codec.decode(codec.encode(x))
    return y[..., : x.shape[-2], : x.shape[-1]]


def _metrics(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    from latentds.metrics import ms_ssim, psnr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {"psnr": round(float(psnr(x, y)), 2), "ms_ssim": round(float(ms_ssim(x, y)), 4)}


def finding_psnr(pos: torch.Tensor, neg: torch.Tensor, rpos: torch.Tensor, rneg: torch.Tensor) -> float:
    d_true, d_rec = pos - neg, rpos - rneg
    mask = d_true[0, 0].abs() > 1e-3
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if ys.numel() == 0:
        return float("nan")
    m = 8
    sl = (slice(max(0, int(ys.min()) - m), int(ys.max()) + m + 1), slice(max(0, int(xs.min()) - m), int(xs.max()) + m + 1))
    mse = float(((d_true[0, 0][sl] - d_rec[0, 0][sl]) ** 2).mean())
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def evaluate(codec_path: str, *, full_res: bool = False, n_synthetic: int = 8) -> dict[str, Any]:
    from pydicom.data import get_testdata_file

    from latentds.codecs import create_codec
    from latentds.preprocess import load_image
    from latentds.testing.synthetic import phantom

    codec = create_codec(codec_path)
    f, c = codec.f, codec.latent_channels
    gamma = f * f / c
    s = int(round(math.sqrt(gamma)))
    assert s * s == gamma, f"γ={gamma} is not a square: no integer bicubic factor"
    out: dict[str, Any] = {"codec": codec.name, "file": codec_path, "gamma": gamma, "bicubic_factor": s}
    rg3 = get_testdata_file("RG3_UNCR.dcm", download=False)
    sizes = [512] + ([None] if full_res else [])
    for size in sizes:
        x = torch.from_numpy(load_image(rg3, size=size))[None, None]
        tiled = create_codec(codec_path, tile_size=256) if size is None else codec
        key = f"real_cr_RG3_{'full' if size is None else size}px"
        out[key] = {"shape": list(x.shape[-2:]), "kl": _metrics(x, codec_roundtrip(tiled, x)),
                    "bicubic": _metrics(x, bicubic_roundtrip(x, s))}
    rows: dict[str, list[float]] = {k: [] for k in ("kl_psnr", "bic_psnr", "kl_msssim", "bic_msssim", "kl_find", "bic_find")}
    for i in range(n_synthetic):
        kind = ("calcification", "fracture")[i % 2]
        seed = 10_000 + i
        pos = torch.from_numpy(phantom(seed, positive=True, kind=kind))[None, None]
        neg = torch.from_numpy(phantom(seed, positive=False, kind=kind))[None, None]
        kp, kn = codec_roundtrip(codec, pos), codec_roundtrip(codec, neg)
        bp, bn = bicubic_roundtrip(pos, s), bicubic_roundtrip(neg, s)
        mk, mb = _metrics(pos, kp), _metrics(pos, bp)
        rows["kl_psnr"].append(mk["psnr"]); rows["bic_psnr"].append(mb["psnr"])
        rows["kl_msssim"].append(mk["ms_ssim"]); rows["bic_msssim"].append(mb["ms_ssim"])
        rows["kl_find"].append(finding_psnr(pos, neg, kp, kn)); rows["bic_find"].append(finding_psnr(pos, neg, bp, bn))
    mean = {k: round(float(np.nanmean(v)), 4 if "msssim" in k else 2) for k, v in rows.items()}
    out["synthetic_findings"] = {
        "n": n_synthetic, "shape": [512, 416],
        "kl": {"psnr": mean["kl_psnr"], "ms_ssim": mean["kl_msssim"], "finding_psnr": mean["kl_find"]},
        "bicubic": {"psnr": mean["bic_psnr"], "ms_ssim": mean["bic_msssim"], "finding_psnr": mean["bic_find"]},
    }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--codec", required=True, help="a save_kl_codec .safetensors file")
    p.add_argument("--full-res", action="store_true", help="also RG3 at full resolution (1760², tiled; slow, GBs of RAM)")
    p.add_argument("--synthetic", type=int, default=8)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    res = evaluate(a.codec, full_res=a.full_res, n_synthetic=a.synthetic)
    text = json.dumps(res, indent=2)
    print(text)
    if a.json:
        with open(a.json, "w", encoding="utf-8") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
