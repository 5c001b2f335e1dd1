"""R2 review of H3's user-journey audit commits (0da039e..75ec571, 3160df9): legitimate uses that the
new one-line errors refuse, and real errors they hide. Each test is a strict xfail until fixed; drop
the mark with the fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

PY = [sys.executable, "-m", "latentds"]


@pytest.fixture()
def cache(tmp_path: Path) -> Path:
    from PIL import Image

    from latentds import LatentDataset

    for c in ("a", "b"):
        (tmp_path / "src" / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray((np.random.default_rng(i).random((32, 32)) * 255).astype("uint8")).save(
                tmp_path / "src" / c / f"{i}.png")
    ds = LatentDataset(tmp_path / "src", codec="bicubic-f8", cache=tmp_path / "cache")
    ds.fill(progress=False)
    ds.compact()
    return tmp_path / "cache"


def test_r2_a_broken_pipe_that_is_not_stdout_is_not_silent(cache: Path) -> None:
    # stdout stays open and read to the end; a command-internal write meets a closed pipe (real EPIPE)
    code = (
        "import os, sys, latentds.store.ops as ops\n"
        "def describe(store):\n"
        "    r, w = os.pipe(); os.close(r); os.write(w, b'x')  # e.g. a helper process that died\n"
        "ops.describe = describe\n"
        "from latentds.cli.entry import main\n"
        f"sys.exit(main(['inspect', {str(cache)!r}]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert not (out.returncode == 141 and out.stderr.strip() == ""), (out.returncode, out.stderr)


def test_r2_sweep_bootstrap_zero_is_still_accepted() -> None:
    import torch

    from latentds.train.probe.metrics import bootstrap_auroc

    ci = bootstrap_auroc(torch.tensor([0.1, 0.9, 0.2, 0.8]), torch.tensor([0, 1, 0, 1]), 2, n_boot=0)
    assert ci.lo == ci.hi == ci.auroc and ci.n_boot == 0  # 0 is a value the library handles
    out = subprocess.run(PY + ["sweep", "--bootstrap", "0", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_r2_cli_accepts_a_chained_fsspec_url(cache: Path, capsys: pytest.CaptureFixture) -> None:
    from latentds.cli.entry import main
    from latentds.store.entries import list_namespaces

    url = f"simplecache::file://{cache}"
    assert len(list_namespaces(url)) == 1  # the library reads it
    assert main(["inspect", url]) == 0, capsys.readouterr().err
