"""Run by .ci/run in a venv holding `pip install latentds` WITHOUT extras.

Shows that what a plain install promises works there (import, LatentDataset on a PNG folder
with bicubic-f8, fill, compact, a warm read, export to webdataset and zarr), and that a feature
which needs an extra says which one in one line instead of a bare ModuleNotFoundError.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

for extra_only in ("lightning", "timm", "matplotlib", "flask"):
    assert importlib.util.find_spec(extra_only) is None, f"{extra_only} is installed: this is not a no-extras venv"

import latentds  # noqa: E402

with tempfile.TemporaryDirectory() as tmp:
    root = Path(tmp) / "src"
    rng = np.random.default_rng(0)
    for cls in ("benign", "malignant"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (64, 48), dtype=np.uint8)).save(root / cls / f"{i}.png")
    ds = latentds.LatentDataset(root, codec="bicubic-f8", cache=Path(tmp) / "cache", image_size=(64, 48))
    report = ds.fill(progress=False)
    assert report.encoded == 6 and not report.failures, report
    ds.compact()
    fresh = latentds.LatentDataset(root, codec="bicubic-f8", cache=Path(tmp) / "cache", image_size=(64, 48))
    z, y = fresh[4]
    assert tuple(z.shape) == (1, 8, 6) and y == 1, (z.shape, y)
    for fmt in ("webdataset", "zarr"):
        out = subprocess.run([sys.executable, "-m", "latentds", "export", str(Path(tmp) / "cache"),
                              str(Path(tmp) / f"out-{fmt}"), "--format", fmt], capture_output=True, text=True)
        assert out.returncode == 0, (fmt, out.stdout, out.stderr)
    # A feature that needs an extra: one line naming the extra, exit 2, no traceback.
    cfg = Path(tmp) / "probe.yaml"
    cfg.write_text("{}\n")
    out = subprocess.run([sys.executable, "-m", "latentds", "train-probe", "--config", str(cfg)],
                         capture_output=True, text=True)
    err = out.stderr.strip()
    assert out.returncode == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "latentds[train]" in err, err
    # The demo is promised on a plain install too (its probe needs torch only, not Lightning).
    out = subprocess.run([sys.executable, "-m", "latentds", "demo", "--workdir", str(Path(tmp) / "demo"),
                          "--n-per-class", "4", "--epochs", "1", "--height", "64", "--width", "64"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "lossless control" in out.stdout, (out.stdout[-2000:], out.stderr[-2000:])
print("core install (no extras): import, fill, compact, warm read, export webdataset+zarr OK; "
      "train-probe names its extra")
