"""Image <-> latent codecs, organised like a model zoo. See ``docs/codecs.md``.

* ``base``       the :class:`Codec` contract and shared helpers (padding, checks, fingerprints)
* ``registry``   name -> factory; ``factory``: :func:`create_codec` (a name or a codec file)
* ``bicubic``, ``s2d``  the free baselines (``bicubic-f{f}``, ``s2d-f{f}c{C}``)
* ``kl``         the KL runtime (``KLCodec``, ``ResidualKLCodec``: precision, tiling)
* ``build``      diffusers ``AutoencoderKL`` configs and model building/loading
* ``checkpoints`` checkpoint layouts (ldm, diffusers, LoRA) -> diffusers state dicts
* ``codec_file`` the exported codec file format (:func:`save_kl_codec`) and the path rule
* ``catalogue``  the registered KL codecs as data; ``weights``: the one weight resolver
  (packaged, local path, Hugging Face cache; never the network); ``zoo``: builds a
  catalogue entry

    >>> from latentds.codecs import create_codec
    >>> codec = create_codec("bicubic-f8")
    >>> z = codec.encode(x)          # x: B×1×H×W float in [0, 1]

Importing this package does not import diffusers; KL codecs import it when created.
"""

from latentds.codecs.base import CODEC_FORMAT_VERSION, Codec
from latentds.codecs.bicubic import register_bicubic_codecs
from latentds.codecs.codec_file import save_kl_codec
from latentds.codecs.factory import create_codec
from latentds.codecs.registry import list_codecs, register_codec
from latentds.codecs.s2d import register_s2d_codecs
from latentds.codecs.weights import shipped_kl_defaults
from latentds.codecs.zoo import register_kl_codecs

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
    "shipped_kl_defaults",
]
