"""From a source's bytes to the image the codec encodes: preprocess (or a user loader), then fit
to a fixed size; and the preprocessing spec that enters the cache namespace.

One :class:`Pipeline` is built by ``LatentDataset`` and by ``latentds.encode`` from the same
arguments, so both give the same namespace and the same pixels.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np
import torch

from ..errors import ConfigError, LatentdsError
from ..preprocess import Preprocess
from ..identity import Identities
from .source import stored_identity

__all__ = ["Fit", "Pipeline", "fit_image", "to_float_image"]

Fit = Literal["pad", "resize"]


def fit_image(img: np.ndarray, image_size: tuple[int, int] | None, fit: Fit) -> np.ndarray:
    """Bring a preprocessed image to a fixed ``(H, W)`` so latents have one shape.

    ``pad`` keeps the aspect ratio: scale to fit inside, then pad bottom/right with 0 (the
    background is black after MONOCHROME1 inversion). ``resize`` stretches to ``(H, W)``.
    """
    if image_size is None:
        return img
    th, tw = image_size
    t = torch.from_numpy(np.ascontiguousarray(img))[None, None]
    if fit == "resize":
        out = torch.nn.functional.interpolate(t, size=(th, tw), mode="bilinear", antialias=True, align_corners=False)
        return out[0, 0].clamp_(0, 1).numpy()
    if fit != "pad":
        raise ValueError(f"fit must be 'pad' or 'resize', not {fit!r}")
    h, w = img.shape
    scale = min(th / h, tw / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        t = torch.nn.functional.interpolate(t, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    canvas = torch.zeros((th, tw), dtype=torch.float32)
    canvas[:nh, :nw] = t[0, 0].clamp(0, 1)
    return canvas.numpy()


def to_float_image(obj: Any, name: str) -> np.ndarray:
    """Accept what a user loader returns (PIL image, array, tensor) as a 2-D float image in [0, 1]."""
    from PIL import Image

    if isinstance(obj, Image.Image):
        if obj.mode not in ("L", "I", "I;16", "F"):
            obj = obj.convert("L")
        arr = np.asarray(obj)
        scale = 255.0 if arr.dtype == np.uint8 else (65535.0 if arr.dtype.kind in "iu" else 1.0)
        arr = arr.astype(np.float32) / scale
    else:
        arr = np.asarray(obj.numpy() if isinstance(obj, torch.Tensor) else obj, dtype=np.float32)
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise LatentdsError(f"{name}: custom loader returned shape {arr.shape}, expected a 2-D grayscale image")
    return np.ascontiguousarray(np.clip(arr, 0.0, 1.0), dtype=np.float32)


@dataclass(frozen=True)
class Pipeline:
    """How a source becomes the codec's input: latentds' preprocessing (or ``loader``), then
    :func:`fit_image`. Small and picklable: it travels to Dask workers."""

    preprocess: Preprocess = Preprocess()
    image_size: tuple[int, int] | None = None
    fit: Fit = "pad"
    loader: Callable[[str], Any] | None = None  # a user's loader(path); its name enters the spec

    def __post_init__(self) -> None:
        if self.fit not in ("pad", "resize"):
            raise ConfigError(f"fit must be 'pad' or 'resize', not {self.fit!r}")
        if self.image_size is not None:
            object.__setattr__(self, "image_size", tuple(int(v) for v in self.image_size))

    def spec(self) -> dict[str, Any]:
        """The preprocessing part of the cache namespace (everything that changes the pixels)."""
        spec: dict[str, Any] = {"preprocess": self.preprocess.to_dict(), "image_size": self.image_size,
                                "fit": self.fit if self.image_size else None}
        if self.loader is not None:
            ld = self.loader
            spec["loader"] = f"{getattr(ld, '__module__', '?')}.{getattr(ld, '__qualname__', repr(ld))}"
        return spec

    def prepare(self, data: bytes, digest: str, url: str, rel: str, ids: Identities, root_id: str
                ) -> tuple[np.ndarray, dict[str, Any]]:
        """The image to encode and the source part of its entry metadata. ``data`` is the file's
        bytes (``digest`` their sha256); a user loader is given ``url`` instead. What the
        metadata says about the file is :func:`~latentds.sample.source.stored_identity`."""
        if self.loader is not None:
            img = to_float_image(self.loader(url), url)
        else:
            img = self.preprocess(io.BytesIO(data), name=url)
        content_shape = list(img.shape)
        img = fit_image(img, self.image_size, self.fit)
        return img, {"content_shape": content_shape, "image_shape": list(img.shape),
                     **stored_identity(ids, root_id, rel, digest)}
