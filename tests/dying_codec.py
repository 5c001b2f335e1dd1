"""A codec that kills its own worker process, for tests of worker deaths in bulk jobs.

It encodes exactly as ``bicubic-f4`` (same fingerprint, so the same namespace and the same
bytes) and dies when told to: the seam through which tests make a real Dask worker die inside
a task without any test hook in the library. Registered under :data:`NAME` when imported; Dask
workers import it through :class:`Register` (a worker plugin, re-run on every restarted worker).

kwargs: ``die_on_shape`` ((h, w): SIGKILL the process, as the kernel's OOM killer would, when a
batch holds an image of that shape, so the one source file of that size is the culprit), ``die_marker`` (``os._exit`` in the first batch
that finds no file at that path, creating it: one death per job), ``delay_s`` (sleep before each
batch: widens a kill window), ``death_log`` (append a line per death to this file; the
environment variable ``LATENTDS_TEST_DEATH_LOG`` names another).
"""

from __future__ import annotations

import os
import signal
import time

import torch
from distributed import WorkerPlugin

from latentds.codecs import register_codec
from latentds.codecs.bicubic import BicubicCodec

NAME = "test-dying-bicubic-f4"


class DyingCodec(BicubicCodec):
    def __init__(self, *, device: str = "cpu", die_on_shape: tuple[int, int] | list[int] | None = None, die_marker: str | None = None,
                 delay_s: float = 0.0, death_log: str | None = None) -> None:
        super().__init__(4, device=device, name="bicubic-f4")  # bicubic-f4's fingerprint
        self.death_log = death_log
        self.die_on_shape, self.die_marker, self.delay_s = (tuple(die_on_shape) if die_on_shape else None), die_marker, delay_s

    def encode_dist(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.die_marker and not os.path.exists(self.die_marker):
            with open(self.die_marker, "w") as fh:
                fh.write(str(os.getpid()))
            self._log_death()
            os._exit(1)
        if self.die_on_shape and tuple(x.shape[-2:]) == self.die_on_shape:
            self._log_death()
            os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer would
        return super().encode_dist(x)


    def _log_death(self) -> None:
        # one line per death, for tests and benchmarks/reliability_counts.py (LATENTDS_TEST_DEATH_LOG)
        for path in {self.death_log, os.environ.get("LATENTDS_TEST_DEATH_LOG")} - {None, ""}:
            with open(str(path), "a") as fh:
                fh.write(f"{os.getpid()}\n")


register_codec(NAME, DyingCodec, replace=True)


def dask_setup(worker) -> None:  # noqa: ANN001 (distributed.Worker)
    """Dask preload hook (``LocalCluster(preload=["dying_codec"])``, tests/ on ``PYTHONPATH``): in
    this worker, ``bicubic-f4`` itself becomes the test codec, configured by the environment
    (``DYING_CODEC_DELAY_S``), so a client - the CLI included - needs no change at all."""
    delay = float(os.environ.get("DYING_CODEC_DELAY_S") or 0)
    register_codec("bicubic-f4", lambda device="cpu", **kw: DyingCodec(device=device, delay_s=delay, **kw),
                   replace=True)


class Register(WorkerPlugin):
    """Dask worker plugin: ``client.register_plugin(Register())`` makes :data:`NAME` known in
    every worker, including those the nanny restarts after a death."""

    name = "latentds-test-dying-codec"

    def setup(self, worker) -> None:  # noqa: ANN001 (distributed.Worker)
        import dying_codec  # noqa: F401  (registers on import)
