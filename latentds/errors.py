"""Typed errors. Every error latentds raises derives from :class:`LatentdsError` and its
message names the file or object at fault and says what is wrong."""

from __future__ import annotations

__all__ = [
    "CacheError", "CodecError", "ConfigError", "DicomError", "EXTRA_OF_MODULE", "ImageReadError", "LatentdsError",
    "ManifestError", "MissingExtraError", "ShardError", "SourceError", "StoreAccessError", "TransientStoreError",
    "WorkerDiedError",
    "missing_extra", "require",
]


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


class SourceError(LatentdsError, FileNotFoundError):
    """A source folder, URL or table is missing, empty or not in a layout latentds can read.
    Also a ``FileNotFoundError``, as torchvision's ``ImageFolder`` raises for the same trees."""


class WorkerDiedError(LatentdsError):
    """A bulk worker process died (out of memory, a signal, a crash in native code) while encoding
    one file alone: that file is recorded as failed, the rest of its partition is encoded."""


class ConfigError(LatentdsError, ValueError):
    """A configuration file or option is missing or invalid (the message says which and how to fix it)."""


class MissingExtraError(LatentdsError, ImportError):
    """A feature needs an optional dependency that is not installed; the message names the
    ``pip install 'latentds[EXTRA]'`` that brings it."""


#: Optional top-level modules -> the extra of ``pyproject.toml`` that installs them.
EXTRA_OF_MODULE: dict[str, str] = {
    "lightning": "train", "timm": "train", "matplotlib": "plot", "flask": "review", "scipy": "review",
    "torch_fidelity": "metrics", "open_clip": "metrics", "litdata": "bench", "selenium": "test",
}


def require(module: str, feature: str):
    """Import ``module`` for ``feature`` or raise :class:`MissingExtraError` naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise missing_extra(exc, feature) from exc


def missing_extra(exc: ModuleNotFoundError, feature: str | None = None) -> LatentdsError | ModuleNotFoundError:
    """The :class:`MissingExtraError` for an optional module that failed to import, else ``exc``."""
    top = (exc.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(top)
    if extra is None:
        return exc
    what = feature or "this feature"
    return MissingExtraError(f"{what} needs the optional package {top!r}, which is not installed: "
                             f"pip install 'latentds[{extra}]'")
