"""latentds: train on huge medical images cheaply.

``LatentDataset`` is a drop-in for torchvision's ``ImageFolder`` over DICOM / PNG folders or
buckets that serves cached autoencoder latents instead of pixels.
"""

from __future__ import annotations

from .codecs import Codec, create_codec, list_codecs, register_codec
from .bulk import encode
from .dataset import LatentDataset
from .errors import (CacheError, CodecError, DicomError, ImageReadError, LatentdsError, ManifestError, ShardError,
                     StoreAccessError, TransientStoreError)
from .iterable import LatentIterableDataset
from .preprocess import Preprocess, load_image, read_dicom, read_image

__version__ = "0.1.0"

__all__ = [
    "CacheError",
    "Codec",
    "CodecError",
    "DicomError",
    "ImageReadError",
    "LatentDataset",
    "LatentIterableDataset",
    "LatentdsError",
    "ManifestError",
    "ShardError",
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
]
