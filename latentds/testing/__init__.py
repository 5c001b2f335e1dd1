"""Test support that ships with the package: synthetic data, a loopback S3 server, conformance suites.

This layer sits above the library (``latentds`` core may never import it) and below the
paper's applications (the demo and the sweep use its synthetic tasks); see
docs/design.md, "Layers". Submodules are imported on use, so ``import latentds.testing``
pulls in neither moto nor pydicom:

- :mod:`latentds.testing.phantoms`: SYNTHETIC radiograph-like phantom arrays.
- :mod:`latentds.testing.synthetic`: SYNTHETIC DICOM files and ImageFolder datasets of them.
- :mod:`latentds.testing.loopback_s3`: a moto S3 server on 127.0.0.1 and a fault-injecting proxy.
- :mod:`latentds.testing.store_conformance`: the store contract's checks, run over local disk,
  ``memory://`` and the loopback S3 server (and over any new backend).
- :mod:`latentds.testing.codec_conformance`: the Codec contract's checks over every registered codec.
"""

from __future__ import annotations

__all__: list[str] = []
