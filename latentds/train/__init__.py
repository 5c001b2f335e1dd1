"""Trainers for the KL autoencoder and for probes on latents: one of the paper's applications
(above the library and latentds.testing; docs/design.md, "Layers")."""

from __future__ import annotations

import logging

__all__: list[str] = []


class _NoAdvertising(logging.Filter):
    """Lightning logs a "💡 Tip: ... try installing litlogger/litmodels" line on every Trainer;
    a sweep builds one Trainer per method, so the same advert would print a dozen times."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "💡 Tip" not in record.getMessage()


for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
              "lightning.pytorch", "pytorch_lightning.utilities.rank_zero"):
    logging.getLogger(_name).addFilter(_NoAdvertising())
