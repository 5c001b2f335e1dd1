"""The probe trainer under DDP: 2 CPU processes (gloo) through the real command line.

Checks that every rank ends with the same weights (batch-norm buffers included) and that the
reported AUROC / CI are those of a single-process evaluation of the saved weights on the whole
test set, although the distributed sampler pads the (odd-sized) test set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("lightning")

from latentds.testing import synthetic  # noqa: E402
from latentds.train.probe import bootstrap_auroc, build_datasets, load_config, load_probe, predict  # noqa: E402
from latentds.train.vae.module import state_hash  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def test_ddp_two_ranks_identical_weights_and_unpadded_auroc(tmp_path: Path) -> None:
    synthetic.make_dataset(tmp_path / "train", n_per_class=6, shape=(256, 192), seed=1)
    synthetic.make_dataset(tmp_path / "test", n_per_class=6, shape=(256, 192), seed=2)
    first = sorted((tmp_path / "test" / "positive").glob("*.dcm"))[0]
    first.unlink()  # 11 test samples: 2 ranks get 6 each, one of them a padding duplicate
    # resnet10t has batch norm: without the buffer sync in ProbeModule.on_train_end the ranks' running
    # statistics differ. 256x192 images -> 64x48 latents, which the probe pads to 64x64 (resnet10t's
    # feature_info reductions go to 32)
    cfg = {"model": {"backbone": "resnet10t", "mode": "full"},
           "data": {"root": str(tmp_path / "train"), "test_root": str(tmp_path / "test"),
                    "cache": str(tmp_path / "cache"), "codec": "bicubic-f4", "image_size": [256, 192],
                    "crop_roi": False},
           "optim": {"epochs": 2, "batch_size": 3, "lr": 3e-3},
           "trainer": {"accelerator": "cpu", "strategy": "ddp", "devices": 2},
           "eval": {"bootstrap": 200}, "output": str(tmp_path / "out")}
    path = tmp_path / "probe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "latentds.train.probe", "--config", str(path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("AUROC") == 1, proc.stdout  # printed by global rank 0 only

    res = json.loads((tmp_path / "out" / "result.json").read_text())["result"]
    extra = res["extra"]
    assert extra["world_size"] == 2 and extra["global_rank"] == 0
    hashes = extra["rank_state_hashes"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    assert res["n_train"] == 12 and res["n_test"] == 11
    assert res["input_fit"] == "pad" and res["input_shape"] == [1, 64, 48] and res["backbone_input_shape"] == [1, 64, 64]
    assert extra["n_test_gathered"] == 12  # the sampler did pad: one duplicate was dropped

    # single-process evaluation of the saved weights on the whole test set
    module = load_probe(tmp_path / "out" / "probe.pt")
    assert state_hash(module.model) == hashes[0]
    _, test, _, _ = build_datasets(load_config([path]))
    assert len(test) == 11
    scores, targets = predict(module, test)
    rows = (tmp_path / "out" / "predictions.csv").read_text().split()[1:]
    assert [int(r.split(",")[0]) for r in rows] == list(range(11))
    assert [int(r.split(",")[1]) for r in rows] == targets.tolist()
    written = torch.tensor([float(r.split(",")[2]) for r in rows])
    assert torch.allclose(written, scores, atol=1e-5), (written, scores)
    ci = bootstrap_auroc(scores, targets, 2, n_boot=200, level=0.95, seed=0)
    assert res["auroc"] == pytest.approx(ci.auroc, abs=1e-9)
    assert (res["ci_lo"], res["ci_hi"]) == pytest.approx((ci.lo, ci.hi), abs=1e-9)
