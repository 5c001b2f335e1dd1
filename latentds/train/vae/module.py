"""The Lightning module: AutoencoderKL generator + PatchGAN discriminator, manual
optimisation with explicit gradient accumulation and alternating G / D updates."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from latentds.train.vae.losses import NLayerDiscriminator, adaptive_weight, build_perceptual, hinge_d_loss

__all__ = [
    "adapt_to_one_channel", "arch_config", "build_autoencoder", "init_logvar", "state_hash", "VAEModule",
    "wrap_architecture",
]

log = logging.getLogger("latentds.train.vae")


# --------------------------------------------------------------------------- architecture


def arch_config(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """diffusers ``AutoencoderKL`` config (1 channel) from the ``model`` section."""
    from latentds.codecs.build import CH_MULT, ldm_config

    f, c = int(model_cfg["f"]), int(model_cfg["latent_channels"])
    cfg = ldm_config(f, c, 1, ch=int(model_cfg["base_channels"]), attn_levels=tuple(model_cfg.get("attn_levels") or ()))
    mult = model_cfg.get("ch_mult")
    if mult is not None:
        if len(mult) != len(CH_MULT[f]):
            raise ValueError(f"model.ch_mult needs {len(CH_MULT[f])} entries for f={f}, got {mult}")
        cfg["block_out_channels"] = [int(model_cfg["base_channels"]) * int(m) for m in mult]
    cfg["layers_per_block"] = int(model_cfg.get("layers_per_block", 2))
    cfg["norm_num_groups"] = int(model_cfg.get("norm_num_groups", 32))
    cfg.update(model_cfg.get("arch") or {})
    bad = [ch for ch in cfg["block_out_channels"] if ch % cfg["norm_num_groups"]]
    if bad:
        raise ValueError(f"block_out_channels {cfg['block_out_channels']} must be multiples of norm_num_groups={cfg['norm_num_groups']}")
    return cfg


def adapt_to_one_channel(sd: dict[str, torch.Tensor], in_channels: int) -> dict[str, torch.Tensor]:
    """3-channel weights -> 1-channel model, exactly matching KLCodec's 3-channel use
    (gray repeated on input: sum conv_in over input channels; outputs averaged: mean of
    conv_out over output channels)."""
    if in_channels == 1:
        return sd
    sd = dict(sd)
    sd["encoder.conv_in.weight"] = sd["encoder.conv_in.weight"].sum(dim=1, keepdim=True)
    sd["decoder.conv_out.weight"] = sd["decoder.conv_out.weight"].mean(dim=0, keepdim=True)
    sd["decoder.conv_out.bias"] = sd["decoder.conv_out.bias"].mean(dim=0, keepdim=True)
    return sd


def build_autoencoder(model_cfg: Mapping[str, Any], init_cfg: Mapping[str, Any] | None, seed: int):
    """(AutoencoderKL, its config, description of the initialisation). For
    ``model.arch_kind: residual-s2d`` the AutoencoderKL holds the correction networks and
    :func:`wrap_architecture` puts the s2d baseline around it."""
    from latentds.codecs import create_codec
    from latentds.codecs.build import build_model, load_model

    init_cfg = init_cfg or {}
    kind = model_cfg.get("arch_kind", "plain")
    if not init_cfg.get("codec"):
        config = arch_config(model_cfg)
        return build_model(config, seed=seed, where="latentds.train.vae"), config, f"random (seed {seed})"
    name = str(init_cfg["codec"])
    kwargs: dict[str, Any] = {}
    if name.endswith(".safetensors"):
        codec = create_codec(name)
    else:
        if init_cfg.get("weights"):
            kwargs["weights"] = init_cfg["weights"]
        if init_cfg.get("arch"):
            kwargs["arch"] = dict(init_cfg["arch"])
        codec = create_codec(name, **kwargs)
    src_kind = getattr(codec, "arch_kind", "plain")
    if src_kind != kind:
        raise ValueError(f"init.codec {name!r} is a {src_kind} model but model.arch_kind is {kind!r}; "
                         f"set model.arch_kind={src_kind} (the weights of one architecture mean nothing in the other)")
    src_cfg = dict(codec.config)
    f = 2 ** (len(src_cfg["block_out_channels"]) - 1)
    if (f, src_cfg["latent_channels"]) != (int(model_cfg["f"]), int(model_cfg["latent_channels"])):
        raise ValueError(f"init.codec {name!r} is f={f}, C={src_cfg['latent_channels']} but model is "
                         f"f={model_cfg['f']}, C={model_cfg['latent_channels']}; set model.f / model.latent_channels to match")
    sd = {k: v.detach().float().clone() for k, v in codec.model.state_dict().items()}
    sd = adapt_to_one_channel(sd, int(src_cfg["in_channels"]))
    config = {**src_cfg, "in_channels": 1, "out_channels": 1}
    model = load_model(config, sd, where=f"init {name!r}")
    return model, config, f"{name} ({codec.source}; {src_cfg['in_channels']}->1 channel)"


def wrap_architecture(vae: torch.nn.Module, model_cfg: Mapping[str, Any], init_cfg: Mapping[str, Any] | None):
    """(model the trainer optimises, description). plain: the AutoencoderKL itself.
    residual-s2d: ResidualS2DAutoencoder around it -- zero-initialised corrections (the
    model starts as s2d-f{f}c{C}) unless it continues a residual codec given as init.codec."""
    if model_cfg.get("arch_kind", "plain") == "plain":
        return vae, ""
    from latentds.codecs.residual import DEFAULT_RESIDUAL_LOGVAR, ResidualS2DAutoencoder

    fresh = not (init_cfg or {}).get("codec")
    lv = model_cfg.get("logvar_init")
    lv = DEFAULT_RESIDUAL_LOGVAR if lv is None else float(lv)
    model = ResidualS2DAutoencoder(vae, int(model_cfg["f"]), int(model_cfg["latent_channels"]),
                                   zero_init=fresh, logvar_init=lv)
    desc = (f", residual-s2d around s2d-f{model_cfg['f']}c{model_cfg['latent_channels']}"
            + (f" (corrections zero-initialised, posterior log-variance {lv:g})" if fresh else " (continued)"))
    return model, desc


def init_logvar(vae: torch.nn.Module, value: float) -> None:
    """Make the initial posterior near-deterministic: the log-variance half of quant_conv
    outputs ``value`` whatever the input. From the default init (log-variance ~ 0) the
    decoder first has to learn through unit-variance latent noise, which costs thousands
    of steps before fine detail can be learned at all; with the KL weight at 1e-6 a trained
    ldm autoencoder ends with a tiny posterior std anyway, so starting there changes the
    path, not the objective."""
    conv = getattr(vae, "quant_conv", None)
    if conv is None:
        raise ValueError("model.logvar_init needs an AutoencoderKL with quant_conv (use_quant_conv=True)")
    c = conv.out_channels // 2
    with torch.no_grad():
        conv.weight[c:].zero_()
        conv.bias[c:].fill_(float(value))


def _noise_seed(seed: int, index: int) -> int:
    h = hashlib.blake2b(f"posterior:{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & (2**63 - 1)


def state_hash(module: torch.nn.Module, buffers: bool = True) -> str:
    h = hashlib.sha256()
    items = module.state_dict().items() if buffers else module.named_parameters()
    for k, v in sorted(items):
        h.update(k.encode())
        h.update(v.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- the module


class VAEModule(pl.LightningModule):
    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        self.cfg = copy.deepcopy(dict(cfg))
        vae, arch, init_desc = build_autoencoder(self.cfg["model"], self.cfg.get("init"), int(self.cfg["seed"]))
        self.arch_kind = self.cfg["model"].get("arch_kind", "plain")
        if self.cfg["model"].get("logvar_init") is not None and self.arch_kind == "plain":
            init_logvar(vae, float(self.cfg["model"]["logvar_init"]))
            init_desc += f", posterior log-variance initialised to {float(self.cfg['model']['logvar_init']):g}"
        self.save_hyperparameters({"cfg": self.cfg, "arch": arch})
        self.arch = arch
        self.init_desc = init_desc
        from diffusers.models.attention_processor import AttnProcessor2_0

        vae.set_attn_processor(AttnProcessor2_0())
        vae, wrap_desc = wrap_architecture(vae, self.cfg["model"], self.cfg.get("init"))
        self.init_desc += wrap_desc
        vae.train().requires_grad_(True)
        self.vae = vae
        d = self.cfg["disc"]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.cfg["seed"]) + 1)
            self.disc = NLayerDiscriminator(1, int(d["ndf"]), int(d["n_layers"]), d.get("norm", "batch"))
        perc, self.perceptual_desc = build_perceptual(self.cfg["perceptual"])
        self._perc = [perc]  # not a submodule: frozen, kept out of checkpoints
        self.automatic_optimization = False
        self.gen_step = 0     # completed generator updates
        self.micro_step = 0   # micro-batches consumed
        self._val_sample: tuple[torch.Tensor, torch.Tensor] | None = None
        self.run_dir: Path | None = None

    # -- pieces ----------------------------------------------------------------

    @property
    def perceptual(self) -> torch.nn.Module:
        return self._perc[0]

    @property
    def last_layer(self) -> torch.Tensor:
        return self.vae.decoder.conv_out.weight

    def reconstruct(self, x: torch.Tensor, index: torch.Tensor | None = None, sample: bool = True):
        post = self.vae.encode(x).latent_dist
        if sample:
            seed = int(self.cfg["seed"])
            idx = index.tolist() if index is not None else list(range(x.shape[0]))
            noise = torch.stack([
                torch.randn(post.mean.shape[1:], generator=torch.Generator().manual_seed(_noise_seed(seed, i)))
                for i in idx]).to(post.mean.device, post.mean.dtype)
            z = post.mean + post.std * noise
        else:
            z = post.mean
        return self.vae.decode(z).sample, post

    def generator_loss(self, x: torch.Tensor, xrec: torch.Tensor, post: Any, disc_on: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        L = self.cfg["loss"]
        P = self.cfg["perceptual"]
        B = x.shape[0]
        l1 = (x.float() - xrec.float()).abs()
        rec = float(L["l1_weight"]) * l1
        hf_w = float(L.get("hf_l1_weight", 0.0))
        if hf_w:
            # L1 between high-pass images: the error in exactly the detail (specks, thin
            # lines, edges) that bicubic smooths away, on top of the plain L1.
            from latentds.codecs.residual import high_pass

            sig = float(L.get("hf_sigma", 1.0))
            hf = (high_pass(x.float(), sig) - high_pass(xrec.float(), sig)).abs()
            rec = rec + hf_w * hf
        p = self.perceptual(x.float(), xrec.float()) if float(P["weight"]) else None
        if p is not None:
            rec = rec + float(P["weight"]) * p
        nll = rec.sum() / B
        kl = post.kl().float().sum() / B
        loss = nll + float(L["kl_weight"]) * kl
        logs = {"l1": l1.mean().detach(), "nll": nll.detach(), "kl": kl.detach()}
        if hf_w:
            logs["hf_l1"] = hf.mean().detach()
        if p is not None:
            logs["perceptual"] = p.mean().detach()
        if disc_on:
            g = -self.disc(xrec).float().mean()
            if L.get("adaptive_weight", True):
                try:
                    dw = adaptive_weight(nll, g, self.last_layer, float(L["disc_weight"]), float(L.get("adaptive_max", 1e4)))
                except RuntimeError:  # no graph to the last layer (frozen decoder)
                    dw = torch.tensor(float(L["disc_weight"]), device=x.device)
            else:
                dw = torch.tensor(float(L["disc_weight"]), device=x.device)
            loss = loss + dw * float(L["disc_factor"]) * g
            logs.update(g_loss=g.detach(), d_weight=dw.detach())
        logs["loss"] = loss.detach()
        return loss, logs

    # -- optimisation ------------------------------------------------------------

    def effective_lrs(self) -> tuple[float, float]:
        o = self.cfg["optim"]
        lr = float(o["lr"])
        if o.get("scale_lr", True):
            world = self.trainer.world_size if self._trainer is not None else 1
            lr *= int(self.cfg["data"]["batch_size"]) * int(self.cfg["trainer"]["accumulate"]) * world
        dlr = lr if o.get("disc_lr") is None else float(o["disc_lr"])
        return lr, dlr

    def lr_factor(self, step: int) -> float:
        """Generator lr multiplier at generator step ``step``: a pure function of the step,
        so a resumed run follows the same schedule."""
        o = self.cfg["optim"]
        warm = int(o.get("warmup_steps") or 0)
        if warm and step < warm:
            return (step + 1) / warm
        if o.get("schedule", "constant") == "cosine":
            total = max(1, int(self.cfg["trainer"]["steps"]) - warm)
            t = min(1.0, max(0, step - warm) / total)
            lo = float(o.get("min_lr_ratio") or 0.0)
            return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * t))
        return 1.0

    def configure_optimizers(self):
        lr, dlr = self.effective_lrs()
        betas = tuple(float(b) for b in self.cfg["optim"]["betas"])
        opt_g = torch.optim.Adam(self.vae.parameters(), lr=lr, betas=betas)
        opt_d = torch.optim.Adam(self.disc.parameters(), lr=dlr, betas=betas)
        return [opt_g, opt_d]

    def _step(self, opt: Any, raw: bool) -> None:
        clip = self.cfg["optim"].get("grad_clip")
        if clip:
            self.clip_gradients(opt, gradient_clip_val=float(clip), gradient_clip_algorithm="norm")
        if raw:
            # The discriminator's step bypasses LightningOptimizer so trainer.global_step
            # counts generator updates only (32-true / bf16-mixed need no grad scaler).
            opt.optimizer.step()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        x, index = batch["image"], batch["index"]
        A = int(self.cfg["trainer"]["accumulate"])
        last = self.micro_step % A == A - 1
        L = self.cfg["loss"]
        disc_on = self.gen_step >= int(L["disc_start"]) and float(L["disc_factor"]) > 0
        opt_g, opt_d = self.optimizers()

        self.toggle_optimizer(opt_g)
        xrec, post = self.reconstruct(x, index)
        loss, logs = self.generator_loss(x, xrec, post, disc_on)
        self.manual_backward(loss / A)
        if last:
            lr_g = self.effective_lrs()[0] * self.lr_factor(self.gen_step)
            for group in opt_g.optimizer.param_groups:
                group["lr"] = lr_g
            self._step(opt_g, raw=False)
        self.untoggle_optimizer(opt_g)

        if disc_on:
            self.toggle_optimizer(opt_d)
            logits_real = self.disc(x.detach())
            logits_fake = self.disc(xrec.detach())
            d_loss = float(L["disc_factor"]) * hinge_d_loss(logits_real.float(), logits_fake.float())
            self.manual_backward(d_loss / A)
            if last:
                self._step(opt_d, raw=True)
            self.untoggle_optimizer(opt_d)
            logs.update(d_loss=d_loss.detach(), logits_real=logits_real.detach().float().mean(),
                        logits_fake=logits_fake.detach().float().mean())

        self.micro_step += 1
        if last:
            self.gen_step += 1
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, prog_bar=False, on_step=True, on_epoch=False,
                      batch_size=x.shape[0])
        self.log("step", float(self.gen_step), on_step=True, on_epoch=False, batch_size=x.shape[0])

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.gen_step >= int(self.cfg["trainer"]["steps"]):
            self.trainer.should_stop = True

    # -- validation ----------------------------------------------------------------

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        from latentds.metrics import ms_ssim, ms_ssim_scales, psnr

        x = batch["image"]
        xrec, _ = self.reconstruct(x, sample=False)
        a, b = ((x.float() + 1) / 2).clamp(0, 1), ((xrec.float() + 1) / 2).clamp(0, 1)
        bs = x.shape[0]
        self.log("val/l1", (a - b).abs().mean(), on_epoch=True, sync_dist=True, batch_size=bs)
        self.log("val/psnr", psnr(a, b).float(), on_epoch=True, sync_dist=True, batch_size=bs, prog_bar=True)
        if ms_ssim_scales(a.shape[-2], a.shape[-1]) > 0:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.log("val/ms_ssim", ms_ssim(a, b).float(), on_epoch=True, sync_dist=True, batch_size=bs)
        if batch_idx == 0:
            self._val_sample = (a[:8].cpu(), b[:8].cpu())

    def on_validation_epoch_end(self) -> None:
        if self._val_sample is None or not self.trainer.is_global_zero or self.trainer.sanity_checking:
            self._val_sample = None
            return
        from torchvision.utils import make_grid, save_image

        a, b = self._val_sample
        self._val_sample = None
        grid = make_grid(torch.cat([a, b]), nrow=a.shape[0], padding=2, pad_value=1.0)
        if self.run_dir is not None:
            out = self.run_dir / "images" / f"val_step{self.gen_step:07d}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            save_image(grid, str(out))
        for lg in self.loggers:
            exp = getattr(lg, "experiment", None)
            if hasattr(exp, "add_image"):
                exp.add_image("val/reconstructions (top: input, bottom: output)", grid, self.gen_step)

    # -- state ----------------------------------------------------------------------

    def on_fit_start(self) -> None:
        self.perceptual.to(self.device)
        if self.trainer.is_global_zero:
            lr, dlr = self.effective_lrs()
            log.info("latentds.train.vae: init %s; perceptual term: %s; lr %.3g (disc %.3g); world %d",
                     self.init_desc, self.perceptual_desc, lr, dlr, self.trainer.world_size)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["vae_trainer"] = {"gen_step": self.gen_step, "micro_step": self.micro_step,
                                     "perceptual": self.perceptual_desc, "arch": json.dumps(self.arch),
                                     "arch_kind": self.arch_kind}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        st = checkpoint.get("vae_trainer", {})
        self.gen_step = int(st.get("gen_step", 0))
        self.micro_step = int(st.get("micro_step", 0))

    def on_train_end(self) -> None:
        """Record (and check) that every rank ends with the same weights. (The
        discriminator's BatchNorm running statistics are per rank, as in any DDP model
        without SyncBatchNorm; DDP broadcasts rank 0's at each step, and D is only ever
        used in training mode, so only its parameters are compared.)"""
        h = state_hash(self.vae) + ":" + state_hash(self.disc, buffers=False)
        hashes = [h]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            hashes = [None] * torch.distributed.get_world_size()  # type: ignore[list-item]
            torch.distributed.all_gather_object(hashes, h)
        if self.trainer.is_global_zero and self.run_dir is not None:
            (self.run_dir / "rank_weights.json").write_text(json.dumps({"gen_step": self.gen_step, "hashes": hashes}))
        if len(set(hashes)) != 1:
            raise RuntimeError(f"ranks ended with different weights: {hashes}")
