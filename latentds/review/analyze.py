"""``latentds review analyze``: the statistics of the paper's reader study (section 3.2).

* per codec and Likert item: mean rating with a percentile bootstrap CI that resamples
  *cases* (all readers' ratings of a drawn case stay together, because ratings of one case
  are correlated);
* paired comparisons of two codecs on one item: Wilcoxon signed-rank over the (case, reader)
  pairs both codecs were rated on (``scipy.stats.wilcoxon``, zero differences dropped as in
  Wilcoxon's original test), with Holm's adjustment across all the tests reported;
* agreement between two readers on one item: Cohen's kappa with quadratic (default) or
  linear weights over the 5 categories, on the trials both rated;
* a Figure-2-style bar plot (mean and CI per codec, one panel per item).
"""

from __future__ import annotations

import csv
import itertools
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .db import AnswerDB
from .study import ITEMS, Study, StudyError, load_study

__all__ = ["analyze_study", "bootstrap_mean_ci", "holm", "load_answers", "paired_tests", "reader_agreement",
           "codec_means", "weighted_kappa", "write_figure"]

ANSWER_COLUMNS = ["reader", "case", "label", "codec", "trial", "position", "original_side", *ITEMS,
                  "comment", "seconds", "answered_utc"]


def load_answers(study: Study) -> list[dict[str, Any]]:
    """Every answer, unblinded (codec and case added from the manifest)."""
    if not study.db_path.exists():
        return []
    out = []
    for r in AnswerDB(study.db_path).rows():
        t = study.trials.get(r["trial"])
        if t is None:
            raise StudyError(f"{study.db_path}: an answer names trial {r['trial']!r}, which {study.root}/study.json "
                             f"does not list; the database belongs to another study")
        out.append({"reader": r["reader"], "case": t["case"], "label": study.cases[t["case"]].get("label"),
                    "codec": t["codec"], "trial": r["trial"], "position": r["position"] + 1,
                    "original_side": r["original_side"], **{k: int(r[k]) for k in ITEMS},
                    "comment": r["comment"], "seconds": r["seconds"], "answered_utc": r["answered_utc"]})
    return out


def bootstrap_mean_ci(values_by_cluster: list[list[float]], *, n_boot: int = 2000, level: float = 0.95,
                      seed: int = 0) -> tuple[float, float, float]:
    """Mean of all values and a percentile bootstrap CI resampling whole clusters."""
    clusters = [c for c in values_by_cluster if len(c)]
    if not clusters:
        return math.nan, math.nan, math.nan
    sums = np.array([float(np.sum(c)) for c in clusters])
    counts = np.array([len(c) for c in clusters], dtype=float)
    mean = float(sums.sum() / counts.sum())
    if len(clusters) == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(clusters), size=(n_boot, len(clusters)))
    boot = sums[idx].sum(1) / counts[idx].sum(1)
    a = (1 - level) / 2
    lo, hi = np.quantile(boot, [a, 1 - a])
    return mean, float(lo), float(hi)


def codec_means(rows: list[dict[str, Any]], codecs: list[str], *, n_boot: int = 2000, level: float = 0.95,
                seed: int = 0) -> list[dict[str, Any]]:
    out = []
    for codec in codecs:
        mine = [r for r in rows if r["codec"] == codec]
        cases = sorted({r["case"] for r in mine})
        for item in ITEMS:
            by_case = [[r[item] for r in mine if r["case"] == c] for c in cases]
            m, lo, hi = bootstrap_mean_ci(by_case, n_boot=n_boot, level=level, seed=seed)
            out.append({"codec": codec, "item": item, "n": len(mine), "cases": len(cases),
                        "readers": len({r["reader"] for r in mine}), "mean": m, "ci_low": lo, "ci_high": hi})
    return out


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN entries stay NaN and are not counted)."""
    idx = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    order = sorted(idx, key=lambda i: pvalues[i])
    m = len(order)
    adj = [math.nan] * len(pvalues)
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * pvalues[i]))
        adj[i] = running
    return adj


def paired_tests(rows: list[dict[str, Any]], codecs: list[str], *, reference: str | None = None
                 ) -> list[dict[str, Any]]:
    """Wilcoxon signed-rank tests of codec ``a`` against ``b`` per item, paired on (case, reader).

    ``reference``: compare every other codec against it only (else every pair)."""
    from scipy.stats import wilcoxon

    if reference is not None:
        if reference not in codecs:
            raise StudyError(f"--reference {reference}: not a codec of this study ({', '.join(codecs)})")
        pairs = [(reference, c) for c in codecs if c != reference]
    else:
        pairs = list(itertools.combinations(codecs, 2))
    index = {(r["codec"], r["case"], r["reader"]): r for r in rows}
    out = []
    for a, b in pairs:
        keys = sorted({(c, rd) for (cd, c, rd) in index if cd == a} & {(c, rd) for (cd, c, rd) in index if cd == b})
        for item in ITEMS:
            xa = np.array([index[(a, *k)][item] for k in keys], float)
            xb = np.array([index[(b, *k)][item] for k in keys], float)
            d = xa - xb
            res: dict[str, Any] = {"a": a, "b": b, "item": item, "n_pairs": len(keys),
                                   "n_nonzero": int(np.count_nonzero(d)),
                                   "mean_a": float(xa.mean()) if len(keys) else math.nan,
                                   "mean_b": float(xb.mean()) if len(keys) else math.nan,
                                   "mean_diff": float(d.mean()) if len(keys) else math.nan}
            if np.count_nonzero(d) == 0:
                # no non-zero difference: no evidence of any difference (scipy would warn / fail)
                res.update(statistic=math.nan, p=math.nan if not len(keys) else 1.0, method="no differences")
            else:
                # Zero differences are dropped (Wilcoxon's original test). Exact null distribution
                # when it is valid (<= 50 pairs, no tied |differences|), else the normal
                # approximation with scipy's tie correction; chosen here so the report can say which.
                nz = d[d != 0]
                exact = len(nz) <= 50 and len(np.unique(np.abs(nz))) == len(nz)
                method = "exact" if exact else "approx"
                w = wilcoxon(nz, alternative="two-sided", method=method)
                res.update(statistic=float(w.statistic), p=float(w.pvalue), method="exact" if exact else "normal approximation")
            out.append(res)
    for r, adj in zip(out, holm([r["p"] for r in out])):
        r["p_holm"] = adj
    return out


def weighted_kappa(a: list[int] | np.ndarray, b: list[int] | np.ndarray, *, categories: int = 5,
                   weights: str = "quadratic") -> float:
    """Cohen's weighted kappa of two raters' ratings in ``1..categories``.

    ``1 - sum(w * O) / sum(w * E)`` with ``O`` the observed joint proportions, ``E`` the
    product of the marginals and ``w_ij = |i - j|^p / (k - 1)^p`` (p = 2 quadratic, 1 linear).
    NaN when the expected disagreement is zero (both raters used one same category)."""
    a, b = np.asarray(a, int), np.asarray(b, int)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError("weighted_kappa needs two equally long 1-D rating lists")
    if len(a) == 0:
        return math.nan
    if a.min() < 1 or b.min() < 1 or a.max() > categories or b.max() > categories:
        raise ValueError(f"ratings must lie in 1..{categories}")
    p = {"quadratic": 2, "linear": 1}.get(weights)
    if p is None:
        raise ValueError("weights must be 'quadratic' or 'linear'")
    obs = np.zeros((categories, categories))
    np.add.at(obs, (a - 1, b - 1), 1)
    obs /= obs.sum()
    exp = np.outer(obs.sum(1), obs.sum(0))
    i, j = np.indices((categories, categories))
    w = np.abs(i - j) ** p / (categories - 1) ** p
    den = float((w * exp).sum())
    return math.nan if den == 0 else 1.0 - float((w * obs).sum()) / den


def reader_agreement(rows: list[dict[str, Any]], *, weights: str = "quadratic") -> list[dict[str, Any]]:
    """Weighted kappa per pair of readers and item, on the trials both rated."""
    readers = sorted({r["reader"] for r in rows})
    index = {(r["reader"], r["trial"]): r for r in rows}
    out = []
    for ra, rb in itertools.combinations(readers, 2):
        trials = sorted({t for (rd, t) in index if rd == ra} & {t for (rd, t) in index if rd == rb})
        for item in ITEMS:
            xa = [index[(ra, t)][item] for t in trials]
            xb = [index[(rb, t)][item] for t in trials]
            out.append({"reader_a": ra, "reader_b": rb, "item": item, "n": len(trials),
                        "kappa": weighted_kappa(xa, xb, weights=weights), "weights": weights})
    return out


def write_figure(means: list[dict[str, Any]], codecs: list[str], path: str | os.PathLike[str], *,
                 title: str = "Expert reader study") -> None:
    """One panel per Likert item, one bar per codec with its bootstrap CI (as Figure 2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ITEMS), figsize=(3.2 * len(ITEMS), 3.4), sharey=True)
    colors = plt.get_cmap("tab10").colors
    for ax, item in zip(np.atleast_1d(axes), ITEMS):
        ms = [next(m for m in means if m["codec"] == c and m["item"] == item) for c in codecs]
        y = np.array([m["mean"] for m in ms])
        err = np.array([[m["mean"] - m["ci_low"] for m in ms], [m["ci_high"] - m["mean"] for m in ms]])
        x = np.arange(len(codecs))
        ax.bar(x, np.nan_to_num(y - 1), bottom=1, color=[colors[i % 10] for i in x], width=0.7)
        ax.errorbar(x, y, yerr=np.nan_to_num(err), fmt="none", ecolor="black", capsize=3, lw=1)
        ax.set_xticks(x, codecs, rotation=30, ha="right", fontsize=8)
        ax.set_title(ITEMS[item]["title"], fontsize=10)
        ax.set_ylim(1, 5.2)
        ax.set_yticks([1, 2, 3, 4, 5])
        ax.grid(axis="y", alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("mean rating (5 = best), 95% CI")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    os.replace(tmp, path)


def _fmt(v: float, nd: int = 2) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"


def analyze_study(study: str | os.PathLike[str] | Study, out: str | os.PathLike[str] | None = None, *,
                  reference: str | None = None, n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                  kappa_weights: str = "quadratic", figure: bool = True) -> dict[str, Any]:
    """Write answers.csv, means.csv, paired.csv, agreement.csv, problems.csv, summary.md and
    figure2.png to ``out`` (default ``STUDY/analysis``); return the tables."""
    st = study if isinstance(study, Study) else load_study(study)
    outdir = Path(out) if out is not None else st.root / "analysis"
    outdir.mkdir(parents=True, exist_ok=True)
    rows = load_answers(st)
    if not rows:
        raise StudyError(f"{st.root}: no answers recorded yet; run `latentds review serve {st.root}` and let "
                         f"readers rate the cases first")
    codecs = st.codecs
    means = codec_means(rows, codecs, n_boot=n_boot, level=level, seed=seed)
    paired = paired_tests(rows, codecs, reference=reference)
    agreement = reader_agreement(rows, weights=kappa_weights)
    problems = [{**p, "case": st.trials[p["trial"]]["case"], "codec": st.trials[p["trial"]]["codec"]}
                for p in AnswerDB(st.db_path).problem_rows()]

    _write_csv(outdir / "answers.csv", rows, ANSWER_COLUMNS)
    _write_csv(outdir / "means.csv", means, ["codec", "item", "n", "cases", "readers", "mean", "ci_low", "ci_high"])
    _write_csv(outdir / "paired.csv", paired, ["a", "b", "item", "n_pairs", "n_nonzero", "mean_a", "mean_b",
                                                "mean_diff", "statistic", "p", "p_holm", "method"])
    _write_csv(outdir / "agreement.csv", agreement, ["reader_a", "reader_b", "item", "n", "kappa", "weights"])
    _write_csv(outdir / "problems.csv", problems, ["reader", "case", "codec", "trial", "reason", "reported_utc"])
    readers = sorted({r["reader"] for r in rows})
    if figure:
        write_figure(means, codecs, outdir / "figure2.png",
                     title=f"Reader study: {len(readers)} reader(s), {len({r['case'] for r in rows})} cases")

    pct = int(round(level * 100))
    lines = [f"# Reader study: {st.root.name}", "",
             f"{len(rows)} answers from {len(readers)} reader(s) ({', '.join(readers)}) on "
             f"{len({r['case'] for r in rows})} of {len(st.cases)} cases; {len(problems)} case(s) skipped for an "
             f"image problem. Ratings: 5-point Likert, 5 = best on every item.", "",
             f"## Mean rating per codec ({pct}% bootstrap CI over cases, {n_boot} resamples)", "",
             "| codec | " + " | ".join(ITEMS[i]["title"] for i in ITEMS) + " |",
             "|---|" + "---|" * len(ITEMS)]
    for c in codecs:
        cells = []
        for i in ITEMS:
            m = next(x for x in means if x["codec"] == c and x["item"] == i)
            cells.append(f"{_fmt(m['mean'])} [{_fmt(m['ci_low'])}, {_fmt(m['ci_high'])}] (n={m['n']})")
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    lines += ["", "## Paired comparisons (Wilcoxon signed-rank, paired per case and reader; Holm-adjusted)", "",
              "| a | b | item | pairs | mean a - b | W | p | p (Holm) |", "|---|---|---|---|---|---|---|---|"]
    for p in paired:
        lines.append(f"| {p['a']} | {p['b']} | {p['item']} | {p['n_pairs']} | {_fmt(p['mean_diff'])} | "
                     f"{_fmt(p['statistic'], 1)} | {_fmt(p['p'], 4)} | {_fmt(p['p_holm'], 4)} |")
    lines += ["", f"## Inter-reader agreement (Cohen's kappa, {kappa_weights} weights)", ""]
    if agreement:
        lines += ["| reader a | reader b | item | trials | kappa |", "|---|---|---|---|---|"]
        lines += [f"| {k['reader_a']} | {k['reader_b']} | {k['item']} | {k['n']} | {_fmt(k['kappa'], 3)} |"
                  for k in agreement]
    else:
        lines.append("Only one reader: no agreement to compute.")
    lines += ["", "Files: answers.csv, means.csv, paired.csv, agreement.csv, problems.csv"
              + (", figure2.png" if figure else "") + ".", ""]
    (outdir / "summary.md").write_text("\n".join(lines), encoding="utf-8")
    return {"out": outdir, "answers": rows, "means": means, "paired": paired, "agreement": agreement,
            "problems": problems}
