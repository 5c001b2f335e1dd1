"""The FLOPs-vs-AUROC sweep: budget selection on a fixed table, and a tiny end-to-end sweep."""

from __future__ import annotations

import dataclasses

import pytest

from latentds.sweep import (FULL, REDUCED, SweepRow, format_markdown, method_family, read_csv, run_sweep,
                            select_within_budget, write_outputs)

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
    assert select_within_budget(TABLE, 0.02).method == "kl-f4c1"   # cheapest >= 0.880
    assert select_within_budget(TABLE, 0.021).method == "kl-f8c4"  # 0.879 now qualifies, 9.50 GMACs
    assert select_within_budget(TABLE, 0.05).method == "kl-f8c1"   # 9.49 < 9.50
    assert select_within_budget(TABLE, 0.2).method == "kl-f16c16"
    assert select_within_budget(TABLE, 0.0).method == FULL          # nothing compressed qualifies
    with pytest.raises(ValueError):
        select_within_budget(TABLE[1:], 0.02)


def test_budget_tie_prefers_higher_compression_then_auroc():
    rows = [_row(FULL, 1, 1, 100, 0.9), _row("a-f8c4", 8, 4, 5.0, 0.89), _row("b-f8c1", 8, 1, 5.0, 0.885)]
    assert select_within_budget(rows, 0.02).method == "b-f8c1"  # γ 64 beats γ 16 at equal GMACs


def test_method_family():
    assert method_family("bicubic-f8", 1) == "bicubic"
    assert method_family("kl-f8c4", 4) == "kl C=4"
    assert method_family("sd-vae-f16c16", 16) == "sd-vae"
    assert method_family("medvae-f8c1", 1) == "medvae C=1"
    assert method_family(FULL, 1) == FULL


def test_tiny_sweep_writes_table_csv_plot(tmp_path):
    cfg = dataclasses.replace(REDUCED, workdir=str(tmp_path / "work"), out=str(tmp_path / "out"), n_per_class=4,
                              shape=(32, 32), epochs=1, batch_size=4, bootstrap=20, budget=0.02,
                              methods=(FULL, "bicubic-f4", "bicubic-f8"))
    rows = run_sweep(cfg, log=lambda *a: None)
    assert [r.method for r in rows] == [FULL, "bicubic-f4", "bicubic-f8"]
    assert [(r.f, r.C, r.gamma, r.input) for r in rows] == [(1, 1, 1, "32x32"), (4, 1, 16, "8x8"), (8, 1, 64, "4x4")]
    assert rows[0].gmacs > rows[1].gmacs > rows[2].gmacs > 0
    assert rows[1].paper_gmacs == pytest.approx(37.96, rel=1e-3)
    for r in rows:
        assert 0 <= r.ci_lo <= r.auroc <= r.ci_hi <= 1 and r.bytes_per_image > 0
    paths = write_outputs(rows, cfg, skipped=["kl-f4c4"])
    for key in ("md", "csv", "png"):
        assert paths[key].exists() and paths[key].stat().st_size > 0
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths["md"].read_text()
    assert "SYNTHETIC" in md and "Budget 0.02" in md and "kl-f4c4" in md
    back = read_csv(paths["csv"])
    assert [r.method for r in back] == [r.method for r in rows]
    assert back[1].auroc == pytest.approx(rows[1].auroc, abs=1e-5)


def test_markdown_budget_line():
    md = format_markdown(TABLE, budget=0.02)
    assert "**kl-f4c1**" in md and md.count("\n|") == len(TABLE) + 1


def test_sweep_cli_parses(tmp_path):
    from latentds.cli import build_parser
    from latentds.sweep import PAPER, config_from_args

    args = build_parser().parse_args(["sweep", "--budget", "0.02", "--paper", "--out", str(tmp_path)])
    cfg = config_from_args(args)
    assert cfg.budget == 0.02 and cfg.backbone == PAPER.backbone == "hrnet_w64" and cfg.shape == (1024, 1024)
    assert cfg.batch_size == 128 and cfg.epochs == 100 and cfg.lr == 1e-4
    cfg = config_from_args(build_parser().parse_args(["sweep", "--epochs", "3"]))
    assert cfg.backbone == "small-cnn" and cfg.epochs == 3


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
                              shape=(32, 32), epochs=1, batch_size=4, bootstrap=20, methods=(f"kl-f8c1={path}",))
    (row,) = run_sweep(cfg, log=lambda *a: None)
    assert (row.method, row.f, row.C, row.input) == ("kl-f8c1", 8, 1, "4x4") and row.bytes_per_image > 0
