"""The package's layers, in one table (docs/design.md, "Layers"; checked by tests/test_layers.py).

A module may import from its own layer and the layers below it, never from a layer above:

    0 core      the library: sample, sources, preprocess, codecs, store, dataset, iterable, bulk,
                errors, ... -- every module not named below (a new module is core by default,
                the strictest place)
    1 testing   latentds.testing: synthetic data, the loopback S3 server, conformance suites
    2 apps      the paper's applications: metrics, FLOPs, probes, tasks, sweep, demo, review,
                the trainers (latentds.train)
    3 cli       the command line

So the library never depends on its test support or on the paper's code, and the applications
can be lifted out without touching the library.
"""

from __future__ import annotations

__all__ = ["LAYERS", "layer_of", "layer_name"]

#: (layer name, module prefixes) from the bottom up; a prefix covers its submodules.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("core", ("latentds",)),
    ("testing", ("latentds.testing",)),
    ("apps", ("latentds.metrics", "latentds.flops", "latentds.probes", "latentds.tasks", "latentds.sweep",
              "latentds.demo", "latentds.demo_figure", "latentds.review", "latentds.train")),
    ("cli", ("latentds.cli", "latentds.__main__")),
)


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of ``module`` (a dotted name): its longest matching prefix wins."""
    best, best_len = 0, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    return best


def layer_name(module: str) -> str:
    return LAYERS[layer_of(module)][0]
