"""The FLOPs-vs-AUROC sweep: budget selection on a fixed table, and a tiny end-to-end sweep."""

from __future__ import annotations

import dataclasses

import pytest

from latentds.sweep import (CONTROL_FAMILY, FULL, REDUCED, SweepRow, control_results,
                            format_markdown, is_control, mark_controls, method_family, plot, read_csv, run_sweep,
                            select_within_budget, with_controls, write_outputs)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def _row(method, f, C, gmacs, auroc):
    return SweepRow(method, f, C, f * f / C, "-", gmacs, 0.0, auroc, auroc - 0.05, auroc + 0.05, 1.0, 100.0)


TABLE = [
    _row(FULL, 1, 1, 607.3, 0.900),
    _row("bicubic-f4", 4, 1, 37.96, 0.850),
    _row("kl-f4c4", 4, 4, 37.99, 0.895),
    _row("kl-f4c1", 4, 1, 37.96, 0.881),   # equal cost to bicubic-f4 but within 0.02
    _row("bicubic-f8", 8, 1, 9.49, 0.700),
    _row("kl-f8c4", 8, 4, 9.50, 0.879),   # just outside 0.02
    _row("kl-f8c1", 8, 1, 9.49, 0.860),
    _row("kl-f16c16", 16, 16, 2.38, 0.75),
]


def test_budget_selection_on_fixed_table():
    sel = lambda b: select_within_budget(TABLE, b, require_control=False).method  # noqa: E731
    assert sel(0.02) == "kl-f4c1"   # cheapest >= 0.880
    assert sel(0.021) == "kl-f8c4"  # 0.879 now qualifies, 9.50 GMACs
    assert sel(0.05) == "kl-f8c1"   # 9.49 < 9.50
    assert sel(0.2) == "kl-f16c16"
    assert sel(0.0) == FULL          # nothing compressed qualifies
    with pytest.raises(ValueError):
        select_within_budget(TABLE[1:], 0.02)
    # by default only rows whose f passed its lossless control count: this table has no controls
    assert select_within_budget(TABLE, 0.2).method == FULL


def test_budget_tie_prefers_higher_compression_then_auroc():
    rows = [_row(FULL, 1, 1, 100, 0.9), _row("a-f8c4", 8, 4, 5.0, 0.89), _row("b-f8c1", 8, 1, 5.0, 0.885)]
    assert select_within_budget(rows, 0.02, require_control=False).method == "b-f8c1"  # γ 64 beats γ 16


# full 0.900 (CI 0.85-0.95); the f=4 control reads its channels, the f=8 one does not
CONTROLLED = TABLE + [_row("s2d-f4c16", 4, 16, 38.1, 0.890), _row("s2d-f8c64", 8, 64, 9.6, 0.600)]


def test_control_flags_and_budget_on_fixed_table(tmp_path):
    rows = [dataclasses.replace(r) for r in CONTROLLED]
    res = mark_controls(rows)
    assert res[4]["passed"] and not res[8]["passed"] and 16 not in res
    flags = {r.method: r.control for r in rows}
    assert flags[FULL] == "" and flags["kl-f4c1"] == "pass" and flags["s2d-f4c16"] == "pass"
    assert flags["kl-f8c1"] == flags["bicubic-f8"] == flags["s2d-f8c64"] == "FAIL"
    assert flags["kl-f16c16"] == "none"
    # kl-f8c1 (0.860) would win a 0.05 budget, but f=8 failed its control: the best f=4 row wins
    assert select_within_budget(rows, 0.05).method == "kl-f4c1"
    assert select_within_budget(rows, 0.05, require_control=False).method == "kl-f8c1"
    md = format_markdown(rows, budget=0.05)
    assert "this probe cannot read 64 channels at f=8" in md and "measure the probe, not the codec" in md
    assert "f=4: this probe" not in md and "**FAIL**" in md and "**kl-f4c1**" in md
    assert method_family("s2d-f8c64", 64) == CONTROL_FAMILY and is_control("s2d-f4c16") and not is_control("s2d-f4c4")
    plot(rows, tmp_path / "p.png", title="t")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_controls_and_baselines_are_added():
    assert with_controls([FULL, "bicubic-f4", "bicubic-f8"]) == [FULL, "bicubic-f4", "bicubic-f8", "s2d-f4c16",
                                                                  "s2d-f8c64"]
    got = with_controls([FULL, "kl-f8c4"])
    assert got == [FULL, "s2d-f8c64", "s2d-f8c4", "kl-f8c4"]  # control, then the γ-matched s2d baseline
    assert with_controls(["kl-f8c4=/x/w.safetensors"], baselines=False) == ["s2d-f8c64", "kl-f8c4=/x/w.safetensors"]
    # what default_methods() builds from the shipped weights (full size, bicubic, kl-f4c4, kl-f8c4)
    d = with_controls([FULL, "bicubic-f4", "bicubic-f8", "bicubic-f16", "kl-f4c4", "kl-f8c4"])
    assert d == [FULL, "bicubic-f4", "bicubic-f8", "bicubic-f16", "s2d-f4c16", "s2d-f8c64", "s2d-f16c256",
                 "s2d-f4c4", "s2d-f8c4", "kl-f4c4", "kl-f8c4"]


def test_method_family():
    assert method_family("bicubic-f8", 1) == "bicubic"
    assert method_family("kl-f8c4", 4) == "kl C=4"
    assert method_family("sd-vae-f16c16", 16) == "sd-vae"
    assert method_family("medvae-f8c1", 1) == "medvae C=1"
    assert method_family(FULL, 1) == FULL


def test_tiny_sweep_writes_table_csv_plot(tmp_path):
    cfg = dataclasses.replace(REDUCED, workdir=str(tmp_path / "work"), out=str(tmp_path / "out"), n_per_class=6,
                              shape=(32, 32), epochs=1, batch_size=4, bootstrap=20, budget=0.02, seeds=(0, 1),
                              methods=(FULL, "bicubic-f4"))
    breakdown, seen = [], []
    rows = run_sweep(cfg, log=lambda *a: None, breakdown=breakdown, on_row=lambda done: seen.append(len(done)))
    assert seen == [1, 2, 3]  # called after every method with the rows so far
    # the lossless control of every f swept runs by default
    assert [r.method for r in rows] == [FULL, "bicubic-f4", "s2d-f4c16"]
    assert [(r.f, r.C, r.gamma, r.input) for r in rows] == [(1, 1, 1, "32x32"), (4, 1, 16, "8x8"), (4, 16, 1, "8x8")]
    # what the backbone sees: the control's stem restores the image resolution (4x), bicubic has no stem
    assert [r.backbone_input for r in rows] == ["32x32", "8x8", "32x32"]
    assert rows[0].gmacs > rows[1].gmacs > 0
    assert rows[2].gmacs > rows[0].gmacs  # the control's probe (stem to full size) is counted whole
    assert rows[1].paper_gmacs == pytest.approx(37.96, rel=1e-3)
    for r in rows:
        assert 0 <= r.ci_lo <= r.ci_hi <= 1 and r.bytes_per_image > 0
        assert len(r.aurocs) == 2 and r.auroc == pytest.approx(sum(r.aurocs) / 2)
        assert r.control in (("",) if r.method == FULL else ("pass", "FAIL"))
    res = control_results(rows)
    assert set(res) == {4}
    for r in rows[1:]:
        assert r.control == ("pass" if res[r.f]["passed"] else "FAIL")
    # the synthetic task records finding sizes: one breakdown per method
    assert [b.method for b in breakdown] == [r.method for r in rows]
    assert sum(breakdown[0].n_pos) == 2 * 3  # every test positive of both seeds lands in a size bin
    paths = write_outputs(rows, cfg, skipped=["kl-f4c4"], breakdown=breakdown)
    for key in ("md", "csv", "png", "size_png", "size_csv"):
        assert paths[key].exists() and paths[key].stat().st_size > 0
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths["md"].read_text()
    assert "SYNTHETIC graded" in md and "Budget 0.02" in md and "kl-f4c4" in md and "AUROC by finding size" in md
    back = read_csv(paths["csv"])
    assert [r.method for r in back] == [r.method for r in rows]
    assert back[1].auroc == pytest.approx(rows[1].auroc, abs=1e-5) and back[1].aurocs == pytest.approx(rows[1].aurocs)
    assert [r.control for r in back] == [r.control for r in rows]
    assert [r.backbone_input for r in back] == [r.backbone_input for r in rows]
    assert "8x8 → 32x32" in md


def _write_png_task(root, n_per_class, size=32, seed=0):
    """An ImageFolder task of 8-bit PNGs (not made by latentds.testing.synthetic): a flat noisy field,
    positives carry one bright pixel at a random position (so at a random sub-pixel phase of
    any space-to-depth)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for cls in ("negative", "positive"):
        (root / cls).mkdir(parents=True)
        for i in range(n_per_class):
            img = 100 + rng.normal(0, 3, (size, size))
            if cls == "positive":
                y, x = rng.integers(2, size - 2, 2)
                img[y, x] = 250
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / cls / f"{cls[0]}{i:03d}.png")


def test_control_flag_appears_when_the_probe_cannot_read_channels(tmp_path):
    """Forced: a probe too small to read 64 channels (the plain small CNN at width 2, no
    stem) on a 1-pixel finding. Full size finds the pixel with any max-pooling detector; on
    the lossless f=8 control the pixel sits in one of 64 channels, most of them never seen
    with a finding in 24 training images, so the control falls far below full size, and
    the f=8 rows are flagged. Also: an ImageFolder task that is not a synthetic one (no
    findings.csv, so no size breakdown)."""
    root = tmp_path / "task"
    _write_png_task(root, 24)
    cfg = dataclasses.replace(REDUCED, workdir=str(tmp_path / "work"), out=str(tmp_path / "out"),
                              data_root=str(root), shape=(32, 32), epochs=15, batch_size=8, bootstrap=100,
                              seeds=(0,), backbone="small-cnn", probe_width=2, budget=0.5,
                              methods=(FULL, "bicubic-f8"))
    breakdown = []
    rows = run_sweep(cfg, log=lambda *a: None, breakdown=breakdown)
    assert [r.method for r in rows] == [FULL, "bicubic-f8", "s2d-f8c64"] and breakdown == []
    full, _, control = rows
    assert full.auroc > 0.9, full
    assert control.ci_hi < full.auroc, control
    assert rows[1].control == control.control == "FAIL"
    md = write_outputs(rows, cfg, breakdown=breakdown)["md"].read_text()
    assert "this probe cannot read 64 channels at f=8" in md
    assert "cheapest within budget is **full size**" in md  # f=8 rows may not be picked
    assert "task at" in md and "SYNTHETIC" not in md


def test_markdown_budget_line():
    md = format_markdown(CONTROLLED, budget=0.02)
    assert "**kl-f4c1**" in md and md.count("\n|") == len(CONTROLLED) + 1


def test_sweep_cli_parses(tmp_path):
    from latentds.cli import build_parser
    from latentds.sweep import PAPER, config_from_args

    args = build_parser().parse_args(["sweep", "--budget", "0.02", "--paper", "--out", str(tmp_path)])
    cfg = config_from_args(args)
    assert cfg.budget == 0.02 and cfg.backbone == PAPER.backbone == "d2s+hrnet_w64" and cfg.shape == (1024, 1024)
    assert cfg.batch_size == 128 and cfg.epochs == 100 and cfg.lr == 1e-4
    cfg = config_from_args(build_parser().parse_args(["sweep", "--epochs", "3"]))
    assert cfg.backbone == "d2s+small-cnn" and cfg.epochs == 3 and cfg.seeds == (0, 1) and cfg.controls and cfg.graded
    cfg = config_from_args(build_parser().parse_args(["sweep", "--seeds", "3", "--no-controls", "--fine",
                                                      "--backbone", "small-cnn", "--stem-lr-scale", "0.5"]))
    assert cfg.seeds == (3,) and not cfg.controls and not cfg.graded and cfg.backbone == "small-cnn"
    assert cfg.stem_lr_scale == 0.5


def test_sweep_with_own_weights_file(tmp_path):
    """NAME=WEIGHTS runs a registered codec with a weights file (a trainer export) and labels the row NAME."""
    from latentds.codecs import create_codec, save_kl_codec
    from latentds.sweep import parse_method, unavailable_codecs

    small = {"block_out_channels": [16, 16, 16, 16], "layers_per_block": 1, "norm_num_groups": 8}
    path = save_kl_codec(create_codec("kl-f8c1", weights="random", arch=small), tmp_path / "mine.safetensors",
                         name="kl-f8c1")
    assert parse_method(f"kl-f8c1={path}") == ("kl-f8c1", str(path)) and parse_method("bicubic-f4") == ("bicubic-f4", None)
    with pytest.raises(ValueError, match="empty weights"):
        parse_method("kl-f8c1=")
    assert "kl-f8c1" not in unavailable_codecs([FULL, f"kl-f8c1={path}"])
    cfg = dataclasses.replace(REDUCED, workdir=str(tmp_path / "work"), out=str(tmp_path / "out"), n_per_class=4,
                              shape=(32, 32), epochs=1, batch_size=4, bootstrap=20, methods=(f"kl-f8c1={path}",),
                              seeds=(0,), controls=False)
    (row,) = run_sweep(cfg, log=lambda *a: None)
    assert (row.method, row.f, row.C, row.input) == ("kl-f8c1", 8, 1, "4x4") and row.bytes_per_image > 0


def test_foreign_task_generator_is_deterministic_and_an_imagefolder(tmp_path):
    """benchmarks/foreign_task.py (the second task, written without latentds): same seed, same
    bytes; a plain ImageFolder that LatentDataset reads; one speck level per positive."""
    import importlib.util
    from pathlib import Path

    from latentds.dataset import LatentDataset

    spec = importlib.util.spec_from_file_location(
        "foreign_task", Path(__file__).resolve().parent.parent / "benchmarks" / "foreign_task.py")
    ft = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ft)
    a = ft.write_task(tmp_path / "a", n_per_class=3, shape=(40, 40), seed=3)
    b = ft.write_task(tmp_path / "b", n_per_class=3, shape=(40, 40), seed=3)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 6 and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    labels = (a / "labels.csv").read_text().splitlines()[1:]
    diam = [float(r.split(",")[2]) for r in labels]
    assert diam[:3] == [0.0] * 3 and all(lo <= d <= hi for d, (lo, hi) in zip(diam[3:], ft.LEVELS))
    ds = LatentDataset(a, codec="bicubic-f4", cache=tmp_path / "cache", crop_roi=False, image_size=(40, 40))
    assert ds.classes == ["negative", "positive"] and len(ds) == 6
    assert ds[5][0].shape == (1, 10, 10)


@pytest.mark.parametrize("argv,fragment", [
    (["--methods", "kl-f8c3"], "unknown codec 'kl-f8c3'"),
    (["--methods", "s2d-f8c5"], "unknown codec 's2d-f8c5'"),
    (["--methods", "kl-f8c1=/does/not/exist.safetensors"], "exist.safetensors"),
    (["--methods", "kl-f8c1="], "empty weights"),
    (["--backbone", "resnet999"], "'resnet999'"),
    (["--backbone", "d2s+resnet999"], "'resnet999'"),
], ids=["unknown-kl", "bad-s2d-c", "missing-weights", "empty-weights", "unknown-backbone", "unknown-d2s-backbone"])
def test_a_sweep_mistake_is_one_line_before_any_row(tmp_path, capsys, argv, fragment):
    """Was: the control rows (minutes each) ran first and the bad method or backbone then ended
    the sweep with a traceback, or (backbone) a timm RuntimeError traceback."""
    from latentds.cli import main

    work = tmp_path / "work"
    code = main(["sweep", "--workdir", str(work), "--out", str(tmp_path / "out"), "--n-per-class", "2",
                 "--epochs", "1", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("latentds: error: ") and len(err.splitlines()) == 1, err
    assert fragment in err, err
    assert not work.exists()  # refused before any synthetic data was written


def test_a_sweep_on_a_task_with_a_bad_image_names_it(tmp_path, capsys):
    """--data-root with an unreadable file: one line naming it (was a RuntimeError traceback)."""
    import numpy as np
    from PIL import Image

    from latentds.cli import main

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "task" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(tmp_path / "task" / c / f"{i}.png")
    (tmp_path / "task" / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code = main(["sweep", "--data-root", str(tmp_path / "task"), "--workdir", str(tmp_path / "work"),
                 "--out", str(tmp_path / "out"), "--methods", "bicubic-f8", "--no-controls", "--size", "32", "32",
                 "--epochs", "1", "--seeds", "0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("latentds: error: ") and "broken.png" in err, err


def test_sweep_help_names_every_default_and_refuses_zero_counts(capsys):
    """Every option that takes a value says its default in --help (--kind, --n-per-class, --size,
    --mode, --epochs, --batch-size, --lr and --bootstrap said nothing); counts of 0 are refused."""
    import argparse

    from latentds.cli import main
    from latentds.sweep import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    silent = [a.option_strings[0] for a in p._actions
              if a.option_strings and a.nargs != 0 and "default" not in (a.help or "")
              and a.dest not in ("help", "data_root", "methods", "budget")]  # these say what "none" means
    assert silent == [], silent
    for flag, value, says in (("--epochs", "0", ">= 1"), ("--n-per-class", "0", ">= 1"), ("--batch-size", "0", ">= 1"),
                              ("--bootstrap", "-1", ">= 0")):  # --bootstrap 0: AUROC without a CI (R2)
        with pytest.raises(SystemExit) as exc:
            main(["sweep", flag, value])
        assert exc.value.code == 2 and f"must be {says}" in capsys.readouterr().err
