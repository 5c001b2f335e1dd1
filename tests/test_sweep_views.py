"""``latentds sweep --views K``: codec rows train on K cached augmented views, one per epoch
(docs/views.md), test on view 0, and the table/CSV/JSON record K (issue 12 item 3)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from latentds import LatentDataset
from latentds.sample.views import choose_view
from latentds.sweep import FULL, REDUCED, read_csv, run_sweep, write_outputs


def test_probe_training_sets_the_epoch_of_a_views_dataset(tmp_path):
    from torch.utils.data import TensorDataset

    from latentds.testing.synthetic import make_dataset
    from latentds.train.probe import EpochSubset, fit_probe

    make_dataset(tmp_path / "src", n_per_class=4, shape=(32, 32))
    ds = LatentDataset(tmp_path / "src", codec="bicubic-f4", cache=tmp_path / "c", views=3, crop_roi=False,
                       image_size=(32, 32))
    served: list[tuple[int, int, int]] = []  # (epoch, index, view) of every training read

    class Recording(EpochSubset):
        def __getitem__(self, j):
            i = self.indices[j]
            served.append((ds.epoch, i, ds.view_index(i)))
            return super().__getitem__(j)

    train = Recording(ds, range(len(ds)))
    x = torch.stack([train[j][0] for j in range(len(train))])
    served.clear()
    res = fit_probe(train, TensorDataset(x, torch.tensor(ds.targets)), in_chans=1, num_classes=2,
                    backbone="small-cnn", epochs=3, batch_size=4, lr=1e-3, bootstrap=10, accelerator="cpu",
                    precision="32-true")
    assert 0 <= res.auroc <= 1
    assert train.epochs_set == [0, 1, 2]  # set before each epoch's reads
    assert sorted({e for e, _, _ in served}) == [0, 1, 2]
    assert all(v == choose_view(i, e, 3) for e, i, v in served)  # each epoch's own views
    assert len({v for _, _, v in served}) > 1  # more than one view was trained on


def test_sweep_with_views_records_them_and_caches_every_view(tmp_path):
    cfg = dataclasses.replace(REDUCED, workdir=str(tmp_path / "work"), out=str(tmp_path / "out"), n_per_class=4,
                              shape=(32, 32), epochs=2, batch_size=4, bootstrap=20, seeds=(0,), views=2,
                              methods=(FULL, "bicubic-f4"), controls=False)
    rows = run_sweep(cfg, log=lambda *a: None)
    assert [(r.method, r.views) for r in rows] == [(FULL, 1), ("bicubic-f4", 2)]
    one = dataclasses.replace(cfg, views=1, workdir=str(tmp_path / "work1"), out=str(tmp_path / "out1"))
    plain = run_sweep(one, log=lambda *a: None)
    assert rows[1].bytes_per_image == pytest.approx(2 * plain[1].bytes_per_image)
    # every view of every image is in the sweep's cache: a views=2 dataset over it encodes nothing
    root = next((tmp_path / "work").glob("data-*"))
    again = LatentDataset(root, codec="bicubic-f4", cache=tmp_path / "work" / "cache", crop_roi=False,
                          image_size=(32, 32), views=2)
    rep = again.fill(progress=False)
    assert rep.encoded == 0 and rep.cached == 2 * len(again)
    paths = write_outputs(rows, cfg)
    md = paths["md"].read_text()
    assert "views (train)" in md and "2 cached augmented views" in md
    assert [r.views for r in read_csv(paths["csv"])] == [1, 2]
    assert json.loads(paths["json"].read_text())["views"] == 2
    assert "views (train)" not in write_outputs(plain, one)["md"].read_text()  # K=1: the table as before


def test_sweep_cli_views_option():
    from latentds.cli import build_parser
    from latentds.sweep import config_from_args

    assert config_from_args(build_parser().parse_args(["sweep"])).views == 1
    assert config_from_args(build_parser().parse_args(["sweep", "--views", "4"])).views == 4
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sweep", "--views", "0"])


def test_probe_training_with_workers_serves_each_epochs_views(tmp_path):
    """With DataLoader workers a views dataset must not be held by persistent workers: they keep
    the copy made at epoch 0 and set_epoch (main process) never reaches it."""
    from torch.utils.data import TensorDataset

    from latentds.testing.synthetic import make_dataset
    from latentds.train.probe import EpochSubset, fit_probe
    from latentds.train.probe.epochs import changes_with_epoch

    make_dataset(tmp_path / "src", n_per_class=3, shape=(32, 32))
    ds = LatentDataset(tmp_path / "src", codec="bicubic-f4", cache=tmp_path / "c", views=3, crop_roi=False,
                       image_size=(32, 32))
    log = tmp_path / "served.txt"  # written by the workers (O_APPEND lines), read here

    class Recording(EpochSubset):
        def __getitem__(self, j):
            with open(log, "a") as f:
                f.write(f"{self.dataset.epoch}\n")
            return super().__getitem__(j)

    train = Recording(ds, range(len(ds)))
    assert changes_with_epoch(train) and not changes_with_epoch(EpochSubset(
        LatentDataset(tmp_path / "src", codec="bicubic-f4", cache=tmp_path / "c", crop_roi=False,
                      image_size=(32, 32)), [0]))
    x = torch.stack([train[j][0] for j in range(len(train))])
    log.unlink()
    fit_probe(train, TensorDataset(x, torch.tensor(ds.targets)), in_chans=1, num_classes=2, backbone="small-cnn",
              epochs=3, batch_size=3, lr=1e-3, bootstrap=10, accelerator="cpu", precision="32-true", num_workers=2)
    epochs = [int(s) for s in log.read_text().split()]
    assert sorted(set(epochs)) == [0, 1, 2]  # persistent workers would read epoch 0 three times
    assert epochs.count(1) == epochs.count(2) == len(ds)  # (epoch 0 also has the shape probe's read)
