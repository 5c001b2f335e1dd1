"""One result row per method, method families, the lossless controls and budget selection.

A control (``s2d-f{f}c{f²}``, space-to-depth: every pixel kept) that scores below full size
beyond its CI means the probe cannot read the channels at that f, so the rows at that f
measure the probe, not the codec: they are flagged and never picked by a budget."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from .config import FULL


@dataclass
class SweepRow:
    method: str
    f: int
    C: int
    gamma: float          # compression ratio: pixels / latent values = f² / C
    input: str            # h×w of the probe's input (the latent; the image for full size)
    gmacs: float          # backbone used, one input
    paper_gmacs: float    # hrnet_w64 at paper_image_size / f (Table 1's FLOPS column)
    auroc: float
    ci_lo: float
    ci_hi: float
    seconds: float        # encode + train + evaluate
    bytes_per_image: float
    family: str = ""
    aurocs: tuple[float, ...] = ()   # one per seed (auroc is their mean; ci_lo / ci_hi the mean bounds)
    control: str = ""     # "pass" / "FAIL": the lossless control at this row's f; "none": no control ran
    backbone_input: str = ""  # h×w the backbone sees: after the d2s stem and padding to its stride ("": = input)
    views: int = 1        # cached augmented views the probe trained on (one per epoch; test: view 0)

    def __post_init__(self) -> None:
        if not self.family:
            self.family = method_family(self.method, self.C)
        self.aurocs = tuple(float(a) for a in self.aurocs)
        if not self.backbone_input:
            self.backbone_input = self.input


CONTROL_FAMILY = "s2d lossless control"


def control_method(f: int) -> str:
    """The lossless control at factor ``f``: space-to-depth with C = f²."""
    return f"s2d-f{f}c{f * f}"


def is_control(method: str) -> bool:
    m = re.fullmatch(r"s2d-f(\d+)c(\d+)", method)
    return bool(m) and int(m.group(2)) == int(m.group(1)) ** 2


def method_family(method: str, C: int) -> str:
    """The plot line a method belongs to: bicubic, ``kl C=4``, sd-vae, ``medvae C=1`` ..."""
    if method == FULL:
        return FULL
    if method.startswith("bicubic"):
        return "bicubic"
    if is_control(method):
        return CONTROL_FAMILY
    if method.startswith("sd-vae"):
        return "sd-vae"
    base = re.sub(r"-f\d+(c\d+)?$", "", method)
    if base == "medvae":
        return "medvae C=1" if C == 1 else "medvae C>1"
    return f"{base} C={C}"


def control_results(rows: Sequence[SweepRow]) -> dict[int, dict[str, Any]]:
    """Per f with a control row: ``{"control", "auroc", "ci_hi", "full", "gap", "passed"}``.

    A control fails when its whole CI lies below the full-size AUROC (the drop is beyond the
    CI): the probe cannot read the C = f² channels of a lossless latent at that f, so every
    row at that f measures the probe, not the codec."""
    full = next((r for r in rows if r.method == FULL), None)
    out: dict[int, dict[str, Any]] = {}
    if full is None:
        return out
    for r in rows:
        if is_control(r.method):
            out[r.f] = {"control": r.method, "auroc": r.auroc, "ci_hi": r.ci_hi, "full": full.auroc,
                        "gap": full.auroc - r.auroc, "passed": bool(r.ci_hi >= full.auroc)}
    return out


def mark_controls(rows: Sequence[SweepRow]) -> dict[int, dict[str, Any]]:
    """Set each compressed row's ``control`` to pass / FAIL / none from :func:`control_results`."""
    res = control_results(rows)
    for r in rows:
        if r.method == FULL:
            r.control = ""
        else:
            r.control = ("pass" if res[r.f]["passed"] else "FAIL") if r.f in res else "none"
    return res


def select_within_budget(rows: Sequence[SweepRow], budget: float, *, require_control: bool = True) -> SweepRow:
    """The cheapest row (fewest GMACs; ties: larger γ, then higher AUROC) whose AUROC is at
    least the full-size AUROC minus ``budget``. The full-size row always qualifies, so it is
    the answer when no compressed row does.

    ``require_control``: only rows whose f passed its lossless control are candidates (an f
    without a control row, or with a failed one, says nothing about the codec)."""
    full = [r for r in rows if r.method == FULL]
    if not full:
        raise ValueError("budget selection needs a full-size row")
    floor = full[0].auroc - float(budget)
    passed = {f for f, c in control_results(rows).items() if c["passed"]}
    ok = [r for r in rows if r.auroc >= floor - 1e-12 and (r.method == FULL or not require_control or r.f in passed)]
    return min(ok, key=lambda r: (r.gmacs, -r.gamma, -r.auroc))


__all__ = ["CONTROL_FAMILY", "SweepRow", "control_method", "control_results", "is_control", "mark_controls",
           "method_family", "select_within_budget"]
