"""One registry for every codec: name -> factory. Built-in codecs are registered by
``latentds.codecs`` on import (factories only: nothing is built or loaded until
``create_codec`` is called, :mod:`latentds.codecs.factory`); users add their own with
:func:`register_codec`.

This module imports no codec implementation, so every codec module can import it
without an import circle."""

from __future__ import annotations

from collections.abc import Callable

from latentds.codecs.base import Codec
from latentds.errors import CodecError

__all__ = ["get_factory", "list_codecs", "register_codec"]

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


def get_factory(name: str) -> Callable[..., Codec] | None:
    """The factory registered under ``name``, or None."""
    return _REGISTRY.get(name)
