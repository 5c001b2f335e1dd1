"""``create_codec``: a codec from a registered name or from a codec file."""

from __future__ import annotations

import os
from typing import Any

from latentds.codecs.base import Codec
from latentds.codecs.codec_file import load_exported_kl_codec, looks_like_codec_path
from latentds.codecs.registry import get_factory, list_codecs
from latentds.errors import CodecError

__all__ = ["create_codec"]


def create_codec(name_or_path: str | os.PathLike[str], **kwargs: Any) -> Codec:
    """Build a codec from a registered name, or from a ``.safetensors`` file written by
    :func:`latentds.codecs.save_kl_codec` (its embedded name and config are used)."""
    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
    if not isinstance(name_or_path, str):
        raise CodecError(f"create_codec expects a codec name or a path, got {type(name_or_path).__name__}")
    factory = get_factory(name_or_path)
    if factory is not None:
        return factory(**kwargs)
    if looks_like_codec_path(name_or_path):
        return load_exported_kl_codec(name_or_path, **kwargs)
    known = ", ".join(list_codecs())
    raise CodecError(
        f"unknown codec {name_or_path!r}. Known codecs: {known}. "
        "Or pass the path of a .safetensors file written by save_kl_codec."
    )
