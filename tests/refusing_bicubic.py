"""A codec that refuses to encode, for tests that a bulk job takes every latent from the cache.

It has ``bicubic-f4``'s fingerprint (so the same namespace) and raises on any encode: a job that
must encode nothing fails loudly if it encodes even one image. Importing the module registers it
as :data:`NAME`; Dask workers get it through :class:`Register` (a worker plugin). As a Dask
worker preload (``DASK_DISTRIBUTED__WORKER__PRELOAD='["refusing_bicubic"]'``, ``tests/`` on
``PYTHONPATH``: a CLI run), :func:`dask_setup` also puts it in the place of ``bicubic-f4`` in the
workers only, while the client keeps the real one for the namespace.
"""

from __future__ import annotations

import torch
from distributed import WorkerPlugin

from latentds.codecs import register_codec
from latentds.codecs.bicubic import BicubicCodec

NAME = "test-refusing-bicubic-f4"


class RefusingCodec(BicubicCodec):
    def __init__(self, *, device: str = "cpu", **_: object) -> None:
        super().__init__(4, device=device, name="bicubic-f4")  # bicubic-f4's fingerprint

    def encode_dist(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise RuntimeError(f"refusing_bicubic: asked to encode {tuple(x.shape)}; every latent should come "
                           "from the cache")


register_codec(NAME, RefusingCodec, replace=True)


def dask_setup(worker: object) -> None:
    """Dask preload hook (worker processes only): bicubic-f4 refuses too."""
    register_codec("bicubic-f4", RefusingCodec, replace=True)


class Register(WorkerPlugin):
    """``client.register_plugin(Register())``: :data:`NAME` is known in every worker."""

    name = "latentds-test-refusing-codec"

    def setup(self, worker) -> None:  # noqa: ANN001 (distributed.Worker)
        import refusing_bicubic  # noqa: F401  (registers on import)
