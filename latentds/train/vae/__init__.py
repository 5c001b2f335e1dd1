"""KL-autoencoder trainer (paper §2.1, A.2): ``python -m latentds.train.vae fit --config cfg.yaml``.
See docs/train_vae.md."""

from latentds.train.vae.config import DEFAULTS, load_config

__all__ = ["DEFAULTS", "load_config", "fit", "export_checkpoint", "VAEModule"]


def __getattr__(name: str):  # lazy: importing the package does not import lightning / diffusers
    if name in ("fit", "export_checkpoint"):
        from latentds.train.vae import run

        return getattr(run, name)
    if name == "VAEModule":
        from latentds.train.vae.module import VAEModule

        return VAEModule
    raise AttributeError(name)
