"""Issue 13's Table 2, side by side for every shipped KL codec: the shipped codec, the free
``s2d`` baseline at the same f, C (and γ), and bicubic at the same f; the paper's numbers
beside them.

    python benchmarks/codec_table.py [--json benchmarks/results/codec_table.json] [--md OUT.md]

Test data (held out of the shipped codecs' training, validation and α guard):
* real: pydicom-data ``RG3_UNCR.dcm`` (CR, 1760², another patient than the training CR
  image RG1), latentds preprocessing, at 512 px longest side;
* synthetic: SYNTHETIC phantoms 512×416, seeds 10000–10007 (calcification and fracture
  kinds alternating), each positive and its negative (identical but for the finding).
  "finding PSNR": the reconstructed finding rec(pos) − rec(neg) against the true one
  pos − neg, over the finding's bounding box + 8 px (latentds/train/vae/evaluate.py).

PSNR (dB, data range 1) and MS-SSIM from ``latentds.metrics``. FID variants are computed
only where their extractor loads locally (``latentds.metrics.available_extractors``);
otherwise the table says why. The paper's numbers are from its Table 2 (its own test
sets: mammography / CXR / bone age at other sizes) -- context, not a like-for-like
comparison; the paper has no f=16 rows and no s2d baseline.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

__all__ = ["PAIRS", "PAPER", "build_table", "main"]

PAIRS = [(4, 1), (4, 4), (8, 1), (8, 4), (16, 1), (16, 16)]

#: The paper's Table 2 (PSNR, MS-SSIM) for "Ours" at (f, C) and bicubic at f.
PAPER: dict[str, dict[Any, tuple[float, float]]] = {
    "ours": {(4, 1): (33.45, 0.973), (4, 4): (38.85, 0.996), (8, 1): (29.71, 0.926), (8, 4): (33.35, 0.973)},
    "bicubic": {4: (33.48, 0.973), 8: (29.81, 0.913)},
}


def _metrics(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    from latentds.metrics import ms_ssim, psnr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {"psnr": float(psnr(x, y)), "ms_ssim": float(ms_ssim(x, y))}


def _roundtrip(codec: Any, x: torch.Tensor) -> torch.Tensor:
    y = codec.decode(codec.encode(x))
    return y[..., : x.shape[-2], : x.shape[-1]]


def test_images(n_synthetic: int = 8) -> dict[str, Any]:
    from pydicom.data import get_testdata_file

    from latentds.preprocess import load_image
    from latentds.testing.synthetic import phantom

    rg3 = get_testdata_file("RG3_UNCR.dcm", download=False)
    if rg3 is None:
        raise FileNotFoundError("pydicom-data RG3_UNCR.dcm is not installed (pip install pydicom-data)")
    pairs = []
    for i in range(n_synthetic):
        kind = ("calcification", "fracture")[i % 2]
        pos = torch.from_numpy(phantom(10_000 + i, positive=True, kind=kind))[None, None]
        neg = torch.from_numpy(phantom(10_000 + i, positive=False, kind=kind))[None, None]
        pairs.append((pos, neg))
    return {"rg3": torch.from_numpy(load_image(rg3, size=512))[None, None], "pairs": pairs}


def evaluate_codec(codec: Any, data: dict[str, Any]) -> dict[str, float]:
    from latentds.train.vae.evaluate import finding_psnr

    rg3 = _metrics(data["rg3"], _roundtrip(codec, data["rg3"]))
    ps, ms, fs = [], [], []
    for pos, neg in data["pairs"]:
        rp, rn = _roundtrip(codec, pos), _roundtrip(codec, neg)
        m = _metrics(pos, rp)
        ps.append(m["psnr"])
        ms.append(m["ms_ssim"])
        fs.append(finding_psnr(pos, neg, rp, rn))
    return {"rg3_psnr": rg3["psnr"], "rg3_ms_ssim": rg3["ms_ssim"], "syn_psnr": float(np.mean(ps)),
            "syn_ms_ssim": float(np.mean(ms)), "finding_psnr": float(np.nanmean(fs)),
            "finding_psnr_min_gap_ref": float(np.nanmin(fs))}


MEASURES = ["rg3_psnr", "rg3_ms_ssim", "syn_psnr", "syn_ms_ssim", "finding_psnr"]


def build_table(names: list[str] | None = None, n_synthetic: int = 8, weights_dir: str | None = None) -> dict[str, Any]:
    from latentds.codecs import create_codec
    from latentds.metrics import available_extractors

    data = test_images(n_synthetic)
    rows = []
    for f, c in PAIRS:
        name = f"kl-f{f}c{c}"
        if names and name not in names:
            continue
        t0 = time.perf_counter()
        # The shipped default (no weights argument), or a candidate from a train_six.py folder.
        kl = create_codec(name, weights=str(Path(weights_dir) / f"{name}.safetensors")) if weights_dir else create_codec(name)
        res = {
            "name": name, "f": f, "C": c, "gamma": f * f // c,
            "arch_kind": getattr(kl, "arch_kind", "plain"), "alpha": getattr(kl, "alpha", None),
            "source": getattr(kl, "source", ""),
            "kl": evaluate_codec(kl, data),
            "s2d": evaluate_codec(create_codec(f"s2d-f{f}c{c}"), data),
            "bicubic": evaluate_codec(create_codec(f"bicubic-f{f}"), data),
            "paper_ours": PAPER["ours"].get((f, c)), "paper_bicubic": PAPER["bicubic"].get(f),
        }
        res["margin_vs_s2d"] = {m: res["kl"][m] - res["s2d"][m] for m in MEASURES}
        res["never_worse_than_s2d"] = all(v >= 0 for v in res["margin_vs_s2d"].values())
        res.pop("finding_psnr_min_gap_ref", None)
        res["seconds"] = round(time.perf_counter() - t0, 1)
        rows.append(res)
        print(f"{name}: margins vs s2d {json.dumps({k: round(v, 4) for k, v in res['margin_vs_s2d'].items()})}",
              file=sys.stderr, flush=True)
    fid = {k: ("available" if v is None else v) for k, v in available_extractors().items() if k != "random-conv"}
    return {"rows": rows, "fid_extractors": fid, "n_synthetic": n_synthetic,
            "machine": f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"}


def _f(v: float | None, nd: int) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def to_markdown(table: dict[str, Any]) -> str:
    out = [
        "| codec (α) | γ | RG3 PSNR: KL / s2d / bicubic | RG3 MS-SSIM: KL / s2d / bicubic | synthetic PSNR: KL / s2d / bicubic "
        "| synthetic MS-SSIM: KL / s2d / bicubic | finding PSNR: KL / s2d / bicubic | KL − s2d (RG3, synth, finding dB) "
        "| paper Table 2 PSNR / MS-SSIM: Ours / bicubic |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table["rows"]:
        k, s, b = r["kl"], r["s2d"], r["bicubic"]
        po, pb = r["paper_ours"], r["paper_bicubic"]
        paper = (f"{po[0]:.2f} / {po[1]:.3f}" if po else "—") + " ; " + (f"{pb[0]:.2f} / {pb[1]:.3f}" if pb else "—")
        mg = r["margin_vs_s2d"]
        alpha = "" if r["alpha"] is None else f" (α {r['alpha']:.2f})"
        out.append(
            f"| {r['name']}{alpha} | {r['gamma']} "
            f"| {_f(k['rg3_psnr'], 2)} / {_f(s['rg3_psnr'], 2)} / {_f(b['rg3_psnr'], 2)} "
            f"| {_f(k['rg3_ms_ssim'], 4)} / {_f(s['rg3_ms_ssim'], 4)} / {_f(b['rg3_ms_ssim'], 4)} "
            f"| {_f(k['syn_psnr'], 2)} / {_f(s['syn_psnr'], 2)} / {_f(b['syn_psnr'], 2)} "
            f"| {_f(k['syn_ms_ssim'], 4)} / {_f(s['syn_ms_ssim'], 4)} / {_f(b['syn_ms_ssim'], 4)} "
            f"| {_f(k['finding_psnr'], 2)} / {_f(s['finding_psnr'], 2)} / {_f(b['finding_psnr'], 2)} "
            f"| {mg['rg3_psnr']:+.2f}, {mg['syn_psnr']:+.2f}, {mg['finding_psnr']:+.2f}"
            f"{'' if r['never_worse_than_s2d'] else ' **worse on some measure**'} "
            f"| {paper} |"
        )
    fid = "; ".join(f"{k}: {v}" for k, v in table["fid_extractors"].items())
    out.append("")
    out.append(f"FID variants: {fid}.")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--codecs", default=None, help="comma-separated subset of the six kl names")
    p.add_argument("--synthetic", type=int, default=8)
    p.add_argument("--weights-dir", default=None, help="evaluate kl-*.safetensors from this folder instead of the shipped ones")
    p.add_argument("--json", default=None)
    p.add_argument("--md", default=None)
    a = p.parse_args(argv)
    names = [s.strip() for s in a.codecs.split(",")] if a.codecs else None
    t0 = time.perf_counter()
    table = build_table(names, a.synthetic, a.weights_dir)
    table["seconds"] = round(time.perf_counter() - t0, 1)
    md = to_markdown(table)
    print(md)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(table, indent=2))
    if a.md:
        Path(a.md).write_text(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
