"""Losses of the latent-diffusion autoencoder (ldm ``LPIPSWithDiscriminator``), for
1-channel images in [-1, 1]:

    rec   = l1_weight·|x − x̂| + perceptual_weight·P(x, x̂)
    nll   = Σ rec / B                      (logvar fixed at 0, as in ldm / MedVAE)
    kl    = Σ KL(q(z|x) ‖ N(0, I)) / B
    L_G   = nll + kl_weight·kl + λ·disc_factor·(−mean D(x̂))      (once step ≥ disc_start)
    λ     = disc_weight · clamp(‖∇nll‖ / (‖∇g‖ + 1e-4), 0, adaptive_max)   at decoder.conv_out.weight
    L_D   = disc_factor · ½(mean relu(1 − D(x)) + mean relu(1 + D(x̂)))    (hinge)

Perceptual term P: LPIPS (VGG16) when the user has the weights locally
(``perceptual.weights_path`` = LPIPS linear heads, ``perceptual.vgg_path`` = torchvision
vgg16 ImageNet weights, or the torch hub cache); otherwise 1 − MS-SSIM (torchmetrics,
``normalize="simple"``, scales reduced to fit the crop). Nothing is ever downloaded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "adaptive_weight", "build_perceptual", "hinge_d_loss", "LPIPS", "MSSSIMLoss", "NLayerDiscriminator",
    "NoPerceptual", "VGG16_FILE",
]

log = logging.getLogger("latentds.train.vae")

VGG16_FILE = "vgg16-397923af.pth"


# --------------------------------------------------------------------------- discriminator


class NLayerDiscriminator(nn.Module):
    """pix2pix PatchGAN (as in taming / ldm): kernel 4, LeakyReLU 0.2, BatchNorm, N(0, 0.02) init."""

    def __init__(self, input_nc: int = 1, ndf: int = 64, n_layers: int = 3, norm: str = "batch") -> None:
        super().__init__()
        use_bn = norm == "batch"
        Norm = nn.BatchNorm2d if use_bn else (lambda c: nn.Identity())
        layers: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 2, 1, bias=not use_bn), Norm(ndf * mult), nn.LeakyReLU(0.2, True)]
        prev, mult = mult, min(2**n_layers, 8)
        layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1, bias=not use_bn), Norm(ndf * mult), nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
        self.main = nn.Sequential(*layers)
        self.apply(_weights_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def _weights_init(m: nn.Module) -> None:
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.constant_(m.bias, 0.0)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_weight(nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    disc_weight: float, max_value: float = 1e4) -> torch.Tensor:
    nll_grads = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    w = torch.norm(nll_grads.float()) / (torch.norm(g_grads.float()) + 1e-4)
    return torch.clamp(w, 0.0, max_value).detach() * disc_weight


# --------------------------------------------------------------------------- perceptual terms


class MSSSIMLoss(nn.Module):
    """1 − MS-SSIM per image (inputs in [-1, 1], compared in [0, 1]); the number of
    scales shrinks to what the image size allows (latentds.metrics rules)."""

    name = "ms-ssim"

    def __init__(self, kernel_size: int = 11) -> None:
        super().__init__()
        self.kernel_size = int(kernel_size)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as msssim

        from latentds.metrics import MS_SSIM_BETAS, ms_ssim_scales

        k = self.kernel_size
        scales = ms_ssim_scales(x.shape[-2], x.shape[-1], kernel_size=k)
        while scales == 0 and k > 3:
            k -= 2
            scales = ms_ssim_scales(x.shape[-2], x.shape[-1], kernel_size=k)
        betas = MS_SSIM_BETAS[:max(1, scales)]
        betas = tuple(b / sum(betas) for b in betas)
        a = ((x.float() + 1) / 2).clamp(0, 1)
        b = ((y.float() + 1) / 2).clamp(0, 1)
        val = msssim(a, b, kernel_size=k, data_range=1.0, betas=betas, normalize="simple", reduction="none")
        return (1.0 - val).view(-1, 1, 1, 1)


class _ScalingLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


class _NetLinLayer(nn.Module):
    def __init__(self, chn_in: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(chn_in, 1, 1, 1, 0, bias=False))


class LPIPS(nn.Module):
    """LPIPS-VGG (Zhang et al. 2018; the taming / ldm port), from local files only.

    ``weights_path``: the LPIPS linear heads (``lin0.model.1.weight`` … ``lin4``; the
    ``vgg.pth`` of the ``lpips`` package or taming's cache), or one file holding those and
    the VGG features (``net.slice*`` keys). ``vgg_path``: torchvision ``vgg16`` ImageNet
    weights (``vgg16-397923af.pth``); default: the torch hub cache, if the file is there."""

    name = "lpips"
    CHNS = (64, 128, 256, 512, 512)

    def __init__(self, weights_path: str | os.PathLike[str], vgg_path: str | os.PathLike[str] | None = None) -> None:
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        self.scaling_layer = _ScalingLayer()
        features = make_layers(cfgs["D"], batch_norm=False)  # = vgg16().features, without the 120M-param classifier
        cuts = [(0, 4), (4, 9), (9, 16), (16, 23), (23, 30)]
        self.slices = nn.ModuleList()
        for a, b in cuts:  # keep torchvision's indices, as the lpips package does (net.slice1.0.weight ...)
            sl = nn.Sequential()
            for i in range(a, b):
                sl.add_module(str(i), features[i])
            self.slices.append(sl)
        self.lins = nn.ModuleList(_NetLinLayer(c) for c in self.CHNS)
        heads = _load_state(weights_path)
        lin = {k: v for k, v in heads.items() if k.startswith("lin")}
        if len(lin) != 5:
            raise ValueError(f"{weights_path}: expected 5 LPIPS linear heads (lin0..lin4.model.1.weight), found {sorted(lin)}")
        for i in range(5):
            self.lins[i].model[1].weight.data.copy_(lin[f"lin{i}.model.1.weight"])
        net = {k[len("net."):]: v for k, v in heads.items() if k.startswith("net.slice")}
        if net:
            for i, sl in enumerate(self.slices):
                pre = f"slice{i + 1}."
                sl.load_state_dict({k[len(pre):]: v for k, v in net.items() if k.startswith(pre)})
        else:
            vgg_file = Path(vgg_path) if vgg_path else Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE
            if not vgg_file.is_file():
                raise FileNotFoundError(
                    f"LPIPS needs torchvision vgg16 ImageNet weights: {str(vgg_file)!r} not found "
                    "(set perceptual.vgg_path; nothing is downloaded)")
            vsd = _load_state(vgg_file)
            feats = {k[len("features."):]: v for k, v in vsd.items() if k.startswith("features.")}
            features.load_state_dict(feats)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "LPIPS":
        return super().train(False)  # always eval (dropout off), as taming/ldm

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a = self.scaling_layer(x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x)
        b = self.scaling_layer(y.repeat(1, 3, 1, 1) if y.shape[1] == 1 else y)
        val = 0
        for s, lin in zip(self.slices, self.lins):
            a, b = s(a), s(b)
            fa = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            fb = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            val = val + lin.model((fa - fb) ** 2).mean(dim=(2, 3), keepdim=True)
        return val


def _load_state(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    p = str(path)
    if p.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(p)
    obj = torch.load(p, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    return dict(obj)


class NoPerceptual(nn.Module):
    name = "none"

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], 1, 1, 1)


def build_perceptual(cfg: Mapping[str, Any]) -> tuple[nn.Module, str]:
    """(module, description). ``auto``: LPIPS if its weights are available locally, else MS-SSIM."""
    kind = cfg.get("kind", "auto")
    wp, vp = cfg.get("weights_path"), cfg.get("vgg_path")
    if kind == "none" or float(cfg.get("weight", 1.0)) == 0.0:
        return NoPerceptual(), "none"
    if kind == "lpips" or (kind == "auto" and wp):
        if not wp:
            raise ValueError("perceptual.kind=lpips needs perceptual.weights_path (LPIPS vgg.pth); nothing is downloaded")
        return LPIPS(wp, vp), f"lpips-vgg (heads {wp})"
    reason = "perceptual.kind=ms-ssim" if kind == "ms-ssim" else "no LPIPS weights given (perceptual.weights_path)"
    return MSSSIMLoss(int(cfg.get("ms_ssim_kernel", 11))), f"ms-ssim (1 - MS-SSIM; {reason})"
