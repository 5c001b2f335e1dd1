"""One registry for every codec: built-in ones register themselves when
``latentds.codecs`` is imported, users add their own with :func:`register_codec`."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from latentds.codecs.base import Codec
from latentds.errors import CodecError

_REGISTRY: dict[str, Callable[..., Codec]] = {}


def register_codec(name: str, factory: Callable[..., Codec], *, replace: bool = False) -> None:
    """Register ``factory(**kwargs) -> Codec`` under ``name``.

    Registering a taken name is an error unless ``replace=True``: silently swapping a
    codec would give a cache two meanings for one name.
    """
    if not isinstance(name, str) or not name or name != name.strip():
        raise CodecError(f"codec name must be a non-empty string without surrounding spaces, got {name!r}")
    if not callable(factory):
        raise CodecError(f"codec {name!r}: factory must be callable, got {type(factory).__name__}")
    if name in _REGISTRY and not replace and _REGISTRY[name] is not factory:
        raise CodecError(f"codec {name!r} is already registered; pass replace=True to override it")
    _REGISTRY[name] = factory


def list_codecs() -> list[str]:
    """Sorted registered codec names."""
    return sorted(_REGISTRY)


def _looks_like_path(name_or_path: str) -> bool:
    return (
        name_or_path.endswith(".safetensors")
        or os.sep in name_or_path
        or "/" in name_or_path
        or Path(name_or_path).is_file()
    )


def create_codec(name_or_path: str | os.PathLike[str], **kwargs: Any) -> Codec:
    """Build a codec from a registered name, or from a ``.safetensors`` file written by
    :func:`latentds.codecs.save_kl_codec` (its embedded name and config are used)."""
    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
    if not isinstance(name_or_path, str):
        raise CodecError(f"create_codec expects a codec name or a path, got {type(name_or_path).__name__}")
    factory = _REGISTRY.get(name_or_path)
    if factory is not None:
        return factory(**kwargs)
    if _looks_like_path(name_or_path):
        # Imported here so that registry stays importable without diffusers.
        from latentds.codecs.kl import load_exported_kl_codec

        return load_exported_kl_codec(name_or_path, **kwargs)
    known = ", ".join(list_codecs())
    raise CodecError(
        f"unknown codec {name_or_path!r}. Known codecs: {known}. "
        "Or pass the path of a .safetensors file written by save_kl_codec."
    )
