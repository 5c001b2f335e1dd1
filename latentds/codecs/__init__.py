"""Image <-> latent codecs: the bicubic baseline, the space-to-depth baselines
(``s2d-f{f}c{C}``), the paper's KL autoencoders
(``kl-f{f}c{C}``), the natural-image latent-diffusion VAEs (``sd-vae-*``) and MedVAE
(``medvae-*``). See ``docs/codecs.md``.

    >>> from latentds.codecs import create_codec
    >>> codec = create_codec("bicubic-f8")
    >>> z = codec.encode(x)          # x: B×1×H×W float in [0, 1]

Importing this package does not import diffusers; KL codecs import it when created.
"""

from latentds.codecs.base import CODEC_FORMAT_VERSION, Codec
from latentds.codecs.bicubic import register_bicubic_codecs
from latentds.codecs.kl import register_kl_codecs, save_kl_codec
from latentds.codecs.registry import create_codec, list_codecs, register_codec
from latentds.codecs.s2d import register_s2d_codecs

register_bicubic_codecs()
register_kl_codecs()
register_s2d_codecs()

__all__ = [
    "CODEC_FORMAT_VERSION",
    "Codec",
    "create_codec",
    "list_codecs",
    "register_codec",
    "save_kl_codec",
]
