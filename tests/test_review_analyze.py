"""`latentds review analyze` on a fixture of known answers, against hand-computed values."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

pytest.importorskip("scipy")
pytest.importorskip("flask")

from latentds.review.analyze import analyze_study, bootstrap_mean_ci, holm, weighted_kappa  # noqa: E402
from latentds.review.cli import main as review_main  # noqa: E402
from latentds.review.db import AnswerDB  # noqa: E402
from latentds.review.study import FORMAT_VERSION, ITEMS, load_study  # noqa: E402

CASES = ["c1", "c2", "c3", "c4", "c5", "c6"]
# ratings[codec][reader][item] per case c1..c6
RATINGS = {
    "A": {"r1": {"fidelity": [5, 4, 5, 4, 3, 5], "diagnostic": [4, 4, 5, 4, 5, 4], "artifacts": [5] * 6},
          "r2": {"fidelity": [4, 4, 5, 3, 3, 4], "diagnostic": [4, 2, 4, 4, 4, 4], "artifacts": [5] * 6}},
    "B": {"r1": {"fidelity": [2, 3, 2, 4, 1, 3], "diagnostic": [3, 4, 2, 4, 1, 4], "artifacts": [5] * 6},
          "r2": {"fidelity": [3, 2, 2, 3, 2, 2], "diagnostic": [4, 4, 4, 4, 4, 4], "artifacts": [5] * 6}},
}


def _fixture(tmp_path):
    root = tmp_path / "study"
    (root / "images").mkdir(parents=True)
    trials = {f"t{codec}{c}": {"case": c, "codec": codec, "reconstruction": {"file": "x.png", "sha256": "0"}}
              for codec in RATINGS for c in CASES}
    manifest = {"format": "latentds-review", "version": FORMAT_VERSION, "seed": 3,
                "codecs": [{"name": "A"}, {"name": "B"}], "items": ITEMS, "readers": None,
                "cases": {c: {"label": None, "original": {"file": "o.png", "sha256": "0"}} for c in CASES},
                "trials": trials}
    (root / "study.json").write_text(json.dumps(manifest))
    st = load_study(root)
    db = AnswerDB(st.db_path)
    for reader in ("r1", "r2"):
        rid = db.sign_in(reader, sorted(trials), st.seed)["id"]
        for codec in RATINGS:
            for k, c in enumerate(CASES):
                db.answer(rid, f"t{codec}{c}", {i: RATINGS[codec][reader][i][k] for i in ITEMS}, "", 1.0)
    return st


def _normal_p(w_plus: float, n: int, tie_counts: list[int]) -> float:
    """Two-sided p of the Wilcoxon signed-rank normal approximation (no continuity correction)."""
    mu = n * (n + 1) / 4
    var = n * (n + 1) * (2 * n + 1) / 24 - sum(t ** 3 - t for t in tie_counts) / 48
    z = (min(w_plus, n * (n + 1) / 2 - w_plus) - mu) / math.sqrt(var)
    return math.erfc(abs(z) / math.sqrt(2))


def test_analyze_reproduces_hand_computed_values(tmp_path):
    from scipy.stats import wilcoxon

    st = _fixture(tmp_path)
    res = analyze_study(st, tmp_path / "out", n_boot=500)
    means = {(m["codec"], m["item"]): m for m in res["means"]}
    # hand: A fidelity = (5+4+5+4+3+5 + 4+4+5+3+3+4) / 12 = 49/12; B = 29/12
    assert means[("A", "fidelity")]["mean"] == pytest.approx(49 / 12)
    assert means[("B", "fidelity")]["mean"] == pytest.approx(29 / 12)
    assert means[("A", "diagnostic")]["mean"] == pytest.approx((26 + 22) / 12)
    assert means[("A", "artifacts")]["mean"] == 5.0
    assert means[("A", "artifacts")]["ci_low"] == means[("A", "artifacts")]["ci_high"] == 5.0
    for m in res["means"]:
        assert m["n"] == 12 and m["cases"] == 6 and m["readers"] == 2
        assert m["ci_low"] <= m["mean"] <= m["ci_high"]
    assert means[("A", "fidelity")]["ci_high"] > means[("A", "fidelity")]["ci_low"]

    paired = {p["item"]: p for p in res["paired"]}
    fid = paired["fidelity"]
    # (case, reader) differences A - B: r1 [3,1,3,0,2,2], r2 [1,2,3,0,1,2]: 10 non-zero, all
    # positive; |d| ties: three 1s, four 2s, three 3s -> W+ = 55, W- = 0.
    assert (fid["a"], fid["b"], fid["n_pairs"], fid["n_nonzero"]) == ("A", "B", 12, 10)
    assert fid["statistic"] == 0.0
    assert fid["mean_diff"] == pytest.approx(20 / 12)
    assert fid["p"] == pytest.approx(_normal_p(55, 10, [3, 4, 3]), rel=1e-9)
    assert fid["p"] == pytest.approx(0.004563, abs=2e-6)
    # ... and scipy's own paired call on the same pairs (zero differences dropped) agrees
    xa = [RATINGS["A"][r]["fidelity"][k] for r in ("r1", "r2") for k in range(6)]
    xb = [RATINGS["B"][r]["fidelity"][k] for r in ("r1", "r2") for k in range(6)]
    assert fid["p"] == pytest.approx(wilcoxon(xa, xb, zero_method="wilcox", method="approx").pvalue, rel=1e-9)

    dia = paired["diagnostic"]
    # differences A - B: r1 [1,0,3,0,4,0], r2 [0,-2,0,0,0,0]: non-zero {1, 3, 4, -2}, no ties
    # -> exact null: W+ = 1+3+4 = 8, W- = 2; P(W <= 2) = |{}, {1}, {2}| / 16, two-sided 6/16.
    assert dia["n_nonzero"] == 4 and dia["statistic"] == 2.0
    assert dia["p"] == pytest.approx(6 / 16)
    assert dia["method"] == "exact"
    art = paired["artifacts"]
    assert art["p"] == 1.0 and art["n_nonzero"] == 0
    # Holm over the three tests: sorted p (0.00456, 0.375, 1.0) -> (3p1, max(., 2p2), max(., p3))
    assert fid["p_holm"] == pytest.approx(3 * fid["p"])
    assert dia["p_holm"] == pytest.approx(2 * 6 / 16)
    assert art["p_holm"] == 1.0

    kap = {k["item"]: k for k in res["agreement"]}
    assert kap["fidelity"]["n"] == 12
    r1 = RATINGS["A"]["r1"]["fidelity"] + RATINGS["B"]["r1"]["fidelity"]
    r2 = RATINGS["A"]["r2"]["fidelity"] + RATINGS["B"]["r2"]["fidelity"]
    assert kap["fidelity"]["kappa"] == pytest.approx(weighted_kappa(r1, r2))
    assert math.isnan(kap["artifacts"]["kappa"])  # both readers always said 5: kappa undefined

    out = tmp_path / "out"
    with open(out / "answers.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 24
    assert {(r["reader"], r["codec"], r["case"]) for r in rows} == {
        (rd, cd, c) for rd in ("r1", "r2") for cd in ("A", "B") for c in CASES}
    got = {(r["reader"], r["codec"], r["case"]): int(r["fidelity"]) for r in rows}
    assert got[("r2", "B", "c1")] == 3 and got[("r1", "A", "c5")] == 3
    png = (out / "figure2.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "| A | B | fidelity | 12 |" in (out / "summary.md").read_text()


def test_weighted_kappa_hand_computed():
    assert weighted_kappa([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)
    # O = 1/2 at (1,5) and (5,1); E = 1/4 in each corner: 1 - 1 / 0.5 = -1
    assert weighted_kappa([1, 5], [5, 1]) == pytest.approx(-1.0)
    # O: 1/4 on (1,1), (2,2), (3,3), (4,5); sum w*O = 1/64, sum w*E = 56/256: kappa = 13/14
    assert weighted_kappa([1, 2, 3, 4], [1, 2, 3, 5]) == pytest.approx(13 / 14)
    # linear weights: sum w*O = 1/16, sum w*E = (7+5+5+7)/16/4 = 3/8: kappa = 1 - 1/6
    assert weighted_kappa([1, 2, 3, 4], [1, 2, 3, 5], weights="linear") == pytest.approx(5 / 6)
    # and the pairwise definition (observed vs all-pairs expected disagreement) on random ratings
    rng = np.random.default_rng(0)
    a, b = rng.integers(1, 6, 40), rng.integers(1, 6, 40)
    w = lambda x, y: (x - y) ** 2 / 16  # noqa: E731
    obs = sum(w(x, y) for x, y in zip(a, b)) / 40
    exp = sum(w(x, y) for x in a for y in b) / 40 ** 2
    assert weighted_kappa(a, b) == pytest.approx(1 - obs / exp)


def test_bootstrap_and_holm():
    m, lo, hi = bootstrap_mean_ci([[1, 2], [3], [5, 5, 5]], n_boot=300, seed=1)
    assert m == pytest.approx(21 / 6) and lo <= m <= hi
    assert bootstrap_mean_ci([[1, 2], [3], [5, 5, 5]], n_boot=300, seed=1) == (m, lo, hi)  # seeded
    assert holm([0.01, 0.04, 0.03, math.nan]) == pytest.approx([0.03, 0.06, 0.06, math.nan], nan_ok=True)


def test_analyze_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    assert review_main(["analyze", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("latentds: error: ") and err.count("\n") == 1 and "no such study folder" in err
    st = _fixture(tmp_path)
    assert review_main(["analyze", str(st.root), "--reference", "Z", "--bootstrap", "50"]) == 2
    assert "--reference Z: not a codec of this study" in capsys.readouterr().err
    assert review_main(["analyze", str(st.root), "--reference", "B", "--bootstrap", "50"]) == 0
    assert (st.root / "analysis" / "figure2.png").exists()
