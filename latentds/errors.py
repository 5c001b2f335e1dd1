"""Typed errors. Every error latentds raises derives from :class:`LatentdsError` and its
message names the file or object at fault and says what is wrong."""

from __future__ import annotations


class LatentdsError(Exception):
    """Base class of every error raised by latentds."""


class ImageReadError(LatentdsError):
    """A source image (PNG / JPEG / TIFF) cannot be read or is not a usable grayscale image."""


class DicomError(ImageReadError):
    """A DICOM file cannot be decoded or preprocessed (no pixel data, multi-frame, colour,
    truncated pixel data, bad VR, unsupported transfer syntax, ...)."""


class CodecError(LatentdsError):
    """A codec cannot be created or its weights cannot be found or loaded."""


class CacheError(LatentdsError):
    """A cached latent or manifest is missing, corrupt or does not match what was expected."""


class StoreAccessError(CacheError):
    """The store refused access or does not exist (HTTP 403 / 404 on a bucket, bad credentials).
    Not retried: the message says what to fix."""


class TransientStoreError(CacheError):
    """A transient object-store error (5xx, throttling, timeout) persisted after every retry."""


class ShardError(CacheError):
    """A shard named by a committed manifest is missing, truncated or corrupt."""


class ManifestError(CacheError):
    """A manifest generation or its pointer is missing, empty, truncated or corrupt."""
