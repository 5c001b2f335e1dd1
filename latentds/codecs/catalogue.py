"""The catalogue of registered KL codecs, as data: one :class:`KLSpec` per name (its f, C,
default architecture, and where published weights may sit in the local Hugging Face
cache). Adding a published autoencoder is adding an entry here; nothing is built or
loaded until ``create_codec`` asks for it (:mod:`latentds.codecs.zoo`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from latentds.codecs.build import ldm_config
from latentds.codecs.weights import HFSource

__all__ = ["KL_GRID", "MEDVAE_REPO", "SPECS", "KLSpec"]

#: The paper's (f, C) grid for ``kl-f{f}c{C}`` (1 input channel).
KL_GRID = [(f, c) for f in (4, 8, 16) for c in (1, 4, 16)]
MEDVAE_REPO = "stanfordmimi/MedVAE"


@dataclass(frozen=True)
class KLSpec:
    """Everything that distinguishes one registered KL codec from another."""

    name: str
    f: int
    latent_channels: int
    config: dict[str, Any]
    hf_sources: tuple[HFSource, ...] = ()
    notes: str = ""


_SD_F8_SOURCES = (
    HFSource("stabilityai/sd-vae-ft-mse", "", "diffusers"),
    HFSource("stabilityai/sd-vae-ft-ema", "", "diffusers"),
    HFSource("stabilityai/sd-vae-ft-mse-original", "vae-ft-mse-840000-ema-pruned.safetensors"),
    HFSource("stabilityai/sd-vae-ft-mse-original", "vae-ft-mse-840000-ema-pruned.ckpt"),
    HFSource("stabilityai/sd-vae-ft-ema-original", "vae-ft-ema-560000-ema-pruned.safetensors"),
    HFSource("stabilityai/sd-vae-ft-ema-original", "vae-ft-ema-560000-ema-pruned.ckpt"),
    HFSource("CompVis/stable-diffusion-v1-4", "vae", "diffusers"),
)
_COMPVIS_NOTE = (
    "CompVis publishes kl-{} only as a zip (https://ommer-lab.com/files/latent-diffusion/kl-{}.zip, "
    "model.ckpt inside) and there is no official Hugging Face repo; pass weights=PATH to that model.ckpt, "
    "or repo_id=/filename= of a mirror you have in your cache"
)
#: MedVAE checkpoints: name -> (f, C, input channels, file in the repo's model_weights/).
_MEDVAE = {
    "medvae-f4c1": (4, 1, 1, "vae_4x_1c_2D.ckpt"),
    "medvae-f8c1": (8, 1, 1, "vae_8x_1c_2D.ckpt"),
    "medvae-f4c3": (4, 3, 3, "vae_4x_3c_2D.ckpt"),
    "medvae-f8c4": (8, 4, 3, "vae_8x_4c_2D.ckpt"),
}


def _specs() -> list[KLSpec]:
    specs = [KLSpec(f"kl-f{f}c{c}", f, c, ldm_config(f, c, 1)) for f, c in KL_GRID]
    specs += [
        KLSpec("sd-vae-f4c3", 4, 3, ldm_config(4, 3, 3), notes=_COMPVIS_NOTE.format("f4", "f4")),
        KLSpec(
            "sd-vae-f8c4",
            8,
            4,
            ldm_config(8, 4, 3),
            hf_sources=_SD_F8_SOURCES,
            notes="download it once with `huggingface-cli download stabilityai/sd-vae-ft-mse` or pass weights=PATH "
            "(an ldm .ckpt/.safetensors or a diffusers folder)",
        ),
        # CompVis kl-f16 has attn_resolutions [16] at resolution 256: self-attention in the
        # deepest level (index 4), unlike kl-f4 / kl-f8.
        KLSpec(
            "sd-vae-f16c16", 16, 16, ldm_config(16, 16, 3, attn_levels=(4,)), notes=_COMPVIS_NOTE.format("f16", "f16")
        ),
    ]
    for name, (f, c, cin, fname) in _MEDVAE.items():
        specs.append(
            KLSpec(
                name,
                f,
                c,
                ldm_config(f, c, cin),
                hf_sources=(HFSource(MEDVAE_REPO, f"model_weights/{fname}"),),
                notes=f"download it once with `huggingface-cli download {MEDVAE_REPO} model_weights/{fname}` "
                "or pass weights=PATH",
            )
        )
    return specs


SPECS: dict[str, KLSpec] = {s.name: s for s in _specs()}
