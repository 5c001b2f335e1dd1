"""latentds: train on huge medical images cheaply.

``LatentDataset`` is a drop-in for torchvision's ``ImageFolder`` over DICOM / PNG folders or
buckets that serves cached autoencoder latents instead of pixels.

Names are imported lazily (PEP 562): ``import latentds`` and ``latentds --help`` do not pay
for torch, diffusers or pyarrow until a name that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (CacheError, CodecError, ConfigError, DicomError, ImageReadError, LatentdsError, ManifestError,
                     MissingExtraError, ShardError, SourceError, StoreAccessError, TransientStoreError)

__version__ = "0.1.0"

#: public name -> module that defines it (imported on first use)
_LAZY: dict[str, str] = {
    "Codec": ".codecs", "create_codec": ".codecs", "list_codecs": ".codecs", "register_codec": ".codecs",
    "encode": ".bulk", "LatentDataset": ".dataset", "LatentIterableDataset": ".iterable",
    "CachedLatentDataset": ".serve", "ShardAwareSampler": ".sampler",
    "Preprocess": ".preprocess", "load_image": ".preprocess", "read_dicom": ".preprocess", "read_image": ".preprocess",
}

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ below does the import
    from .bulk import encode
    from .codecs import Codec, create_codec, list_codecs, register_codec
    from .dataset import LatentDataset
    from .iterable import LatentIterableDataset
    from .preprocess import Preprocess, load_image, read_dicom, read_image
    from .sampler import ShardAwareSampler
    from .serve import CachedLatentDataset


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'latentds' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


#: this module's own helpers: not API, so kept out of ``dir(latentds)`` (tab completion, help)
_HIDDEN = {"annotations", "Any", "TYPE_CHECKING", "importlib"}


def __dir__() -> list[str]:
    return sorted((set(globals()) - _HIDDEN) | set(_LAZY))


__all__ = [
    "CacheError",
    "CachedLatentDataset",
    "Codec",
    "CodecError",
    "ConfigError",
    "DicomError",
    "ImageReadError",
    "LatentDataset",
    "LatentIterableDataset",
    "LatentdsError",
    "ManifestError",
    "MissingExtraError",
    "ShardError",
    "SourceError",
    "StoreAccessError",
    "TransientStoreError",
    "Preprocess",
    "create_codec",
    "encode",
    "list_codecs",
    "load_image",
    "read_dicom",
    "read_image",
    "register_codec",
    "ShardAwareSampler",
]
