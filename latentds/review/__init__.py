"""``latentds review``: the paper's expert reader study (section 3.2) as a local web app.

* :func:`create_study` picks cases (stratified by class), renders each original and each
  codec's reconstruction through latentds' own preprocessing and ``decode``, and writes a
  self-contained study folder (16-bit PNGs with opaque names, ``study.json``, no DICOM tags,
  no source paths).
* :func:`create_app` / ``latentds review serve`` serves the blinded side-by-side rating page;
  answers go to ``answers.sqlite`` in the study folder, committed at each answer.
* :func:`analyze_study` exports a CSV and computes per-codec means with bootstrap CIs, paired
  Wilcoxon signed-rank tests, weighted kappa between readers and a Figure-2-style plot.

See docs/review.md.
"""

from __future__ import annotations

from .study import ITEMS, Study, StudyError, create_study, load_study

__all__ = ["ITEMS", "Study", "StudyError", "analyze_study", "create_app", "create_study", "load_study"]


def __getattr__(name: str):  # Flask / scipy / matplotlib are imported only when needed
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "analyze_study":
        from .analyze import analyze_study

        return analyze_study
    raise AttributeError(name)
