"""``fit(cfg)``: build data, module and Lightning Trainer, train, export codecs.
``export_checkpoint(ckpt, out)``: a trainer checkpoint -> latentds codec file."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from latentds.train.vae.config import dump_config
from latentds.train.vae.data import StepSampler, TrainCrops, ValCrops, build_banks
from latentds.train.vae.module import VAEModule

__all__ = ["export_checkpoint", "fit", "run_dir_of", "VAEData"]

log = logging.getLogger("latentds.train.vae")


class VAEData(pl.LightningDataModule):
    """Train loader starts at the module's ``micro_step`` (restored from a checkpoint
    before loaders are built) and ends at ``steps * accumulate``: resume is exact."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        self.cfg = cfg
        self.train_bank, self.val_bank = build_banks(cfg["data"], int(cfg["seed"]))

    def train_dataloader(self) -> DataLoader:
        d, t = self.cfg["data"], self.cfg["trainer"]
        module = self.trainer.lightning_module
        stop = int(t["steps"]) * int(t["accumulate"])
        sampler = StepSampler(module.micro_step, stop, int(d["batch_size"]),
                              self.trainer.global_rank, self.trainer.world_size)
        ds = TrainCrops(self.train_bank, d, int(self.cfg["seed"]))
        nw = int(d.get("num_workers", 0))
        return DataLoader(ds, batch_size=int(d["batch_size"]), sampler=sampler, num_workers=nw,
                          persistent_workers=False, drop_last=False)

    def val_dataloader(self) -> DataLoader:
        d = self.cfg["data"]
        if self.val_bank is None:
            return []  # type: ignore[return-value]
        ds = ValCrops(self.val_bank, int(d.get("val_crop") or d["crop"]), d.get("val_max"))
        # every rank validates its own slice of the fixed crops
        idx = list(range(self.trainer.global_rank, len(ds), self.trainer.world_size))
        return DataLoader(torch.utils.data.Subset(ds, idx), batch_size=int(d["batch_size"]),
                          num_workers=int(d.get("num_workers", 0)))


def run_dir_of(cfg: Mapping[str, Any]) -> Path:
    t, m = cfg["trainer"], cfg["model"]
    return Path(t["out_dir"]) / (t.get("name") or f"kl-f{m['f']}c{m['latent_channels']}")


def _strategy(t: Mapping[str, Any]) -> Any:
    s = t.get("strategy", "auto")
    if s in ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook"):
        from lightning.pytorch.strategies import DDPStrategy

        # D is idle before disc_start and each backward uses only G or only D.
        accel = t.get("accelerator", "auto")
        backend = "gloo" if accel == "cpu" or not torch.cuda.is_available() else None
        return DDPStrategy(start_method={"ddp": "popen", "ddp_spawn": "spawn"}.get(s, "fork"),
                           find_unused_parameters=True, process_group_backend=backend)
    return s


def fit(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Train; returns {"run_dir", "best", "last", "codec_best", "codec_last", "gen_step"}."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    t = cfg["trainer"]
    if t.get("precision") in ("16-mixed", "16", 16):
        raise ValueError("trainer.precision: use 32-true or bf16-mixed (fp16 needs a grad scaler this trainer does not drive)")
    pl.seed_everything(int(cfg["seed"]), workers=True, verbose=False)
    import warnings

    warnings.filterwarnings("ignore", message=".*manual optimization and every_n_train_steps.*")
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
    run = run_dir_of(cfg)
    ckpt_dir = run / "checkpoints"
    data = VAEData(cfg)
    module = VAEModule(cfg)
    module.run_dir = run

    loggers: list[Any] = [CSVLogger(str(run), name="logs")]  # logs/version_N: a resumed run never overwrites
    tb = t.get("tensorboard", "auto")
    if tb:
        try:
            from lightning.pytorch.loggers import TensorBoardLogger

            import tensorboard  # noqa: F401

            loggers.append(TensorBoardLogger(str(run), name="tb"))
        except ImportError:
            if tb is True:
                raise
    has_val = data.val_bank is not None
    callbacks = [ModelCheckpoint(dirpath=str(ckpt_dir), filename="step{step:07d}", auto_insert_metric_name=False,
                                 every_n_train_steps=int(t["ckpt_every"]), save_top_k=1, save_last=True)]
    if has_val:
        callbacks.append(ModelCheckpoint(dirpath=str(ckpt_dir), filename="best", monitor="val/psnr", mode="max",
                                         save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False))
    A = int(t["accumulate"])
    trainer = pl.Trainer(
        accelerator=t.get("accelerator", "auto"), devices=t.get("devices", 1), num_nodes=int(t.get("num_nodes", 1)),
        strategy=_strategy(t), precision=t.get("precision", "32-true"),
        max_epochs=-1, max_steps=-1, max_time=({"seconds": float(t["max_time"])} if t.get("max_time") else None), reload_dataloaders_every_n_epochs=1,
        val_check_interval=int(t["val_every"]) * A if has_val else None,
        check_val_every_n_epoch=None, limit_val_batches=1.0 if has_val else 0,
        num_sanity_val_steps=0, log_every_n_steps=int(t.get("log_every", 10)),
        logger=loggers, callbacks=callbacks, enable_progress_bar=bool(t.get("progress", False)),
        enable_model_summary=False, deterministic=bool(t.get("deterministic", False)),
        default_root_dir=str(run), use_distributed_sampler=False,
    )
    if trainer.is_global_zero:
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
    resume = t.get("resume")
    if resume == "last":
        resume = str(ckpt_dir / "last.ckpt") if (ckpt_dir / "last.ckpt").is_file() else None
    steps = int(t["steps"])
    if resume:
        st = torch.load(resume, map_location="cpu", weights_only=True).get("vae_trainer", {})
        if int(st.get("gen_step", 0)) >= steps:
            log.info("latentds.train.vae: %s already at step %s >= trainer.steps=%d; nothing to train", resume, st.get("gen_step"), steps)
            return _finish(cfg, run, module, trainer=None)
    trainer.fit(module, datamodule=data, ckpt_path=resume, weights_only=True)
    # A final 'last' checkpoint at exactly the end step (every rank must call save_checkpoint).
    trainer.save_checkpoint(str(ckpt_dir / "last.ckpt"), weights_only=False)
    return _finish(cfg, run, module, trainer)


def _finish(cfg: Mapping[str, Any], run: Path, module: VAEModule, trainer: Any) -> dict[str, Any]:
    ckpt_dir = run / "checkpoints"
    best = ckpt_dir / "best.ckpt"
    out = {"run_dir": str(run), "last": str(ckpt_dir / "last.ckpt"), "best": str(best) if best.is_file() else None,
           "gen_step": module.gen_step, "perceptual": module.perceptual_desc, "init": module.init_desc}
    is_zero = trainer is None or trainer.is_global_zero
    if cfg["trainer"].get("export", True) and is_zero:
        val = _validation_images(cfg) if cfg["model"].get("arch_kind", "plain") == "residual-s2d" else None
        out["codec_last"] = str(export_checkpoint(out["last"], run / "codec-last.safetensors", val_images=val))
        if out["best"]:
            out["codec_best"] = str(export_checkpoint(out["best"], run / "codec-best.safetensors", val_images=val))
        (run / "result.json").write_text(json.dumps(out, indent=2))
    return out


def _validation_images(cfg: Mapping[str, Any]) -> list[torch.Tensor] | None:
    """The validation crops as 1×1×h×w tensors in [0, 1] (the residual α guard's data)."""
    from latentds.train.vae.data import ValCrops

    _, val_bank = build_banks(cfg["data"], int(cfg["seed"]))
    if val_bank is None:
        return None
    d = cfg["data"]
    ds = ValCrops(val_bank, int(d.get("val_crop") or d["crop"]), d.get("val_max"))
    return [((ds[i]["image"][None].float() + 1) / 2).clamp(0, 1) for i in range(len(ds))]


def export_checkpoint(ckpt: str | os.PathLike[str], out: str | os.PathLike[str], *, name: str | None = None,
                      val_images: list[torch.Tensor] | None = None, alpha: float | None = None) -> Path:
    """Trainer checkpoint (``.ckpt``) -> latentds codec file (safetensors + config) that
    ``create_codec(out)`` and ``create_codec("kl-f{f}c{C}", weights=out)`` load.

    A residual-s2d checkpoint is exported with its correction scale α: ``alpha`` if given,
    else the α that :func:`latentds.codecs.residual.choose_alpha` picks on ``val_images``
    (never worse than s2d on any of them), else 1.0 (no validation data: stated in the log)."""
    from latentds.codecs import save_kl_codec
    from latentds.codecs.build import load_model
    from latentds.codecs.kl import ResidualKLCodec
    from latentds.codecs.residual import choose_alpha

    state = torch.load(str(ckpt), map_location="cpu", weights_only=True)
    hp = state.get("hyper_parameters") or {}
    arch = hp.get("arch")
    if arch is None:
        raise ValueError(f"{ckpt}: not a latentds.train.vae checkpoint (no 'arch' hyper-parameter)")
    kind = ((hp.get("cfg") or {}).get("model") or {}).get("arch_kind", "plain")
    sd = {k[len("vae."):]: v for k, v in state["state_dict"].items() if k.startswith("vae.")}
    model = load_model(arch, sd, where=f"checkpoint {str(ckpt)!r}")
    f = 2 ** (len(arch["block_out_channels"]) - 1)
    name = name or f"kl-f{f}c{arch['latent_channels']}"
    if kind == "plain":
        return save_kl_codec(model, out, name=name)
    if alpha is None and val_images:
        codec = ResidualKLCodec(name, model, alpha=1.0)

        def roundtrip(x: torch.Tensor, a: float) -> torch.Tensor:
            codec.alpha = a
            return codec.decode(codec.encode(x))[..., : x.shape[-2], : x.shape[-1]]

        alpha, report = choose_alpha(roundtrip, val_images)
        log.info("latentds.train.vae: residual alpha %.2f chosen on %d validation images (%s)", alpha, len(val_images),
                 json.dumps([r for r in report["grid"] if r["alpha"] == alpha]))
    elif alpha is None:
        alpha = 1.0
        log.warning("latentds.train.vae: no validation images; residual codec exported with alpha=1.0 (unguarded)")
    return save_kl_codec(model, out, name=name, arch_kind="residual-s2d", alpha=float(alpha))
