"""A sweep's outputs: ``tradeoff.md`` / ``.csv`` / ``.png``, ``tradeoff.config.json`` and the
per-finding-size table and plot."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Sequence

from .config import FULL, SweepConfig
from .rows import (CONTROL_FAMILY, SweepRow, control_results, is_control, mark_controls,
                   select_within_budget)
from .run import SizeBreakdown


COLUMNS = ("method", "f", "C", "gamma", "input", "gmacs", "paper_gmacs", "auroc", "ci_lo", "ci_hi", "seconds",
           "bytes_per_image", "aurocs", "control", "backbone_input", "views")


def control_warnings(rows: Sequence[SweepRow]) -> list[str]:
    """One sentence per f whose lossless control failed."""
    out = []
    for f, c in sorted(control_results(rows).items()):
        if not c["passed"]:
            out.append(f"**f={f}: this probe cannot read {f * f} channels at f={f}** (lossless control {c['control']} "
                       f"AUROC {c['auroc']:.3f}, CI up to {c['ci_hi']:.3f}, below full size {c['full']:.3f}): "
                       f"rows at this f measure the probe, not the codec.")
    return out


def format_markdown(rows: Sequence[SweepRow], *, budget: float | None = None, title: str = "") -> str:
    lines = []
    if title:
        lines += [title, ""]
    lines += ["| method | f | C | γ | input → backbone sees | GMACs (probe used) | GMACs hrnet_w64 @1024/f | AUROC mean (95% CI) "
              "| AUROC per seed | control at f | wall time (s) | bytes / image |",
              "|---|---:|---:|---:|---|---:|---:|---|---|---|---:|---:|"]
    views = any(r.views > 1 for r in rows)  # the column only where some row trained on views
    if views:
        lines[-2] += " views (train) |"
        lines[-1] += "---:|"
    for r in rows:
        flag = {"FAIL": "**FAIL**", "pass": "pass", "none": "not run"}.get(r.control, "")
        if is_control(r.method):
            flag = f"{flag} (this row)" if flag else "(this row)"
        seeds = ", ".join(f"{a:.3f}" for a in r.aurocs)
        seen = r.input if r.backbone_input in ("", r.input) else f"{r.input} → {r.backbone_input}"
        lines.append(f"| {r.method} | {r.f} | {r.C} | {r.gamma:g} | {seen} | {r.gmacs:.4g} | {r.paper_gmacs:.2f} "
                     f"| {r.auroc:.3f} ({r.ci_lo:.3f}–{r.ci_hi:.3f}) | {seeds} | {flag} | {r.seconds:.0f} "
                     f"| {r.bytes_per_image:,.0f} |" + (f" {r.views} |" if views else ""))
    warnings = control_warnings(rows)
    if warnings:
        lines += [""] + [f"- {w}" for w in warnings]
    elif control_results(rows):
        lines += ["", "Every lossless control is within its CI of full size: this probe reads the channels at "
                      f"f = {', '.join(str(f) for f in sorted(control_results(rows)))}."]
    if budget is not None and any(r.method == FULL for r in rows):
        best = select_within_budget(rows, budget)
        lines += ["", f"Budget {budget:g} (AUROC drop from full size; only rows whose f passed its control): "
                      f"cheapest within budget is **{best.method}** "
                      f"(f={best.f}, C={best.C}, AUROC {best.auroc:.3f}, {best.gmacs:.4g} GMACs)."]
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, tuple):
        return ";".join(f"{a:.6g}" for a in v)
    return str(v)


def write_csv(rows: Sequence[SweepRow], path: str | os.PathLike) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow([_fmt(getattr(r, c)) for c in COLUMNS])


def read_csv(path: str | os.PathLike) -> list[SweepRow]:
    with open(path, newline="") as fh:
        out = []
        for d in csv.DictReader(fh):
            aurocs = tuple(float(a) for a in (d.get("aurocs") or "").split(";") if a)
            out.append(SweepRow(d["method"], int(d["f"]), int(d["C"]), float(d["gamma"]), d["input"],
                                float(d["gmacs"]), float(d["paper_gmacs"]), float(d["auroc"]), float(d["ci_lo"]),
                                float(d["ci_hi"]), float(d["seconds"]), float(d["bytes_per_image"]), aurocs=aurocs,
                                control=d.get("control") or "", backbone_input=d.get("backbone_input") or "",
                                views=int(d.get("views") or 1)))
        return out


def plot(rows: Sequence[SweepRow], path: str | os.PathLike, *, title: str = "") -> None:
    """AUROC (with CI bars) against GFLOPs (GMACs, log x), one line per method family. Control
    rows are drawn as open squares; rows at an f whose control failed get a red cross and the
    f is named in a red note."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    families: dict[str, list[SweepRow]] = {}
    for r in rows:
        families.setdefault(r.family, []).append(r)
    for fam, rs in families.items():
        rs = sorted(rs, key=lambda r: r.gmacs)
        xs = [r.gmacs for r in rs]
        ys = [r.auroc for r in rs]
        err = [[r.auroc - r.ci_lo for r in rs], [r.ci_hi - r.auroc for r in rs]]
        marker = "*" if fam == FULL else "s" if fam == CONTROL_FAMILY else "o"
        ax.errorbar(xs, ys, yerr=err, marker=marker, markersize=10 if fam == FULL else 6, capsize=3,
                    label=fam, linestyle="-" if len(rs) > 1 else "none",
                    markerfacecolor="none" if fam == CONTROL_FAMILY else None)
        for r in rs:
            if r.method != FULL:
                ax.annotate(f"f{r.f}", (r.gmacs, r.auroc), textcoords="offset points", xytext=(4, 4), fontsize=7)
    bad = [r for r in rows if r.control == "FAIL"]
    if bad:
        ax.scatter([r.gmacs for r in bad], [r.auroc for r in bad], marker="x", s=90, color="red", zorder=5,
                   label="control FAILED at this f")
        fs = sorted({r.f for r in bad})
        ax.text(0.01, 0.01, "probe cannot read the channels at f = " + ", ".join(map(str, fs))
                + ": those rows measure the probe, not the codec", transform=ax.transAxes, fontsize=7,
                color="red", va="bottom")
    ax.set_xscale("log")
    ax.set_xlabel("GFLOPs per image (GMACs, paper convention; log scale)")
    ax.set_ylabel("AUROC (test, mean over seeds, 95% bootstrap CI)")
    ax.axhline(0.5, color="grey", lw=0.5, ls=":")
    import textwrap

    ax.set_title("\n".join(textwrap.wrap(title or "AUROC vs compute", 90)), fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_by_size(breakdown: Sequence[SizeBreakdown], path: str | os.PathLike, *, title: str = "") -> None:
    """AUROC by finding size (x: size bin), one line per method: which f erases which size."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for b in breakdown:
        xs = [i for i, v in enumerate(b.auroc) if not math.isnan(v)]
        style = "-" if not is_control(b.method) else "--"
        ax.plot(xs, [b.auroc[i] for i in xs], style, marker="*" if b.method == FULL else "o", label=b.method)
    if breakdown:
        ax.set_xticks(range(len(breakdown[0].bins)))
        ax.set_xticklabels([f"{lbl} px\n(n={n})" for lbl, n in zip(breakdown[0].bins, breakdown[0].n_pos)], fontsize=7)
    ax.axhline(0.5, color="grey", lw=0.5, ls=":")
    ax.set_ylim(0.3, 1.02)
    ax.set_xlabel("finding size (px; positives of that size vs all negatives, test sets of all seeds)")
    ax.set_ylabel("AUROC (mean over seeds)")
    import textwrap

    ax.set_title("\n".join(textwrap.wrap(title or "AUROC by finding size", 90)), fontsize=8)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_by_size(breakdown: Sequence[SizeBreakdown]) -> str:
    if not breakdown:
        return ""
    b0 = breakdown[0]
    head = "| method | " + " | ".join(f"{lbl} px (n={n})" for lbl, n in zip(b0.bins, b0.n_pos)) + " |"
    lines = [head, "|---|" + "---:|" * len(b0.bins)]
    for b in breakdown:
        lines.append(f"| {b.method} | " + " | ".join("–" if v != v else f"{v:.3f}" for v in b.auroc) + " |")
    return "\n".join(lines) + "\n"


def describe(cfg: SweepConfig) -> str:
    task = "graded" if cfg.graded else "fine-grained"
    task = (f"SYNTHETIC {task} task ({cfg.kind} phantoms, {2 * cfg.n_per_class} images "
            f"{cfg.shape[0]}x{cfg.shape[1]}, {int(cfg.test_fraction * 100)}% held out)") if not cfg.data_root \
        else f"task at {cfg.data_root} (images resized to {cfg.shape[0]}x{cfg.shape[1]})"
    stem = (f" (stem: {cfg.stem_chans} ch/pixel, {cfg.stem_kernel}x{cfg.stem_kernel}, init {cfg.stem_init}, "
            f"lr x {cfg.stem_lr_scale:g}·16/C)") if cfg.backbone.startswith("d2s+") else ""
    seeds = tuple(cfg.seeds) or (cfg.seed,)
    return (f"{task}; probe {cfg.backbone}{stem} ({cfg.mode}), AdamW lr {cfg.lr:g}, batch {cfg.batch_size}, "
            f"{cfg.epochs} epochs, seeds {', '.join(map(str, seeds))} (mean reported)"
            + (f"; codec rows trained on {cfg.views} cached augmented views (one per epoch, docs/views.md), "
               f"tested on view 0" if cfg.views > 1 else ""))


def write_outputs(rows: Sequence[SweepRow], cfg: SweepConfig, *, skipped: Sequence[str] = (),
                  breakdown: Sequence[SizeBreakdown] = ()) -> dict[str, Path]:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    mark_controls(rows)
    title = f"# FLOPs vs AUROC sweep\n\n{describe(cfg)}."
    if skipped:
        title += f"\n\nNot run (no weights available locally): {', '.join(skipped)}."
    paths = {"md": out / "tradeoff.md", "csv": out / "tradeoff.csv", "png": out / "tradeoff.png",
             "json": out / "tradeoff.config.json"}
    md = format_markdown(rows, budget=cfg.budget, title=title)
    if breakdown:
        paths["size_png"] = out / "tradeoff_by_size.png"
        paths["size_csv"] = out / "tradeoff_by_size.csv"
        md += "\n## AUROC by finding size\n\n" + format_by_size(breakdown)
        plot_by_size(breakdown, paths["size_png"], title=describe(cfg))
        with open(paths["size_csv"], "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["method", *breakdown[0].bins])
            for b in breakdown:
                w.writerow([b.method, *(f"{v:.6g}" for v in b.auroc)])
    paths["md"].write_text(md)
    write_csv(rows, paths["csv"])
    plot(rows, paths["png"], title=describe(cfg))
    paths["json"].write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    return paths


__all__ = ["COLUMNS", "control_warnings", "describe", "format_by_size", "format_markdown", "plot", "plot_by_size",
           "read_csv", "write_csv", "write_outputs"]
