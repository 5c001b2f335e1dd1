"""GRAZPEDWRI-DX (pediatric wrist trauma radiographs, figshare): fracture task.

Published layout (the figshare archives unpacked side by side)::

    <root>/dataset.csv
    <root>/images_part1/<filestem>.png ... <root>/images_part4/<filestem>.png
        (a merged <root>/images/ folder is accepted too)

``dataset.csv`` has one row per image: ``filestem``, ``patient_id``, ``timehash``, ``age``,
``gender``, ``laterality``, ``projection``, ``fracture_visible`` (``1`` or empty), ``metal``,
``cast``, ``diagnosis_uncertain``, ``ao_classification``, ... Label = 1 if
``fracture_visible`` is 1, else 0. Patients have several studies and images: the split is by
``patient_id``.
"""

from __future__ import annotations

import os
from pathlib import Path

from .base import (
    SPLIT_SALT, Sample, TaskDataError, column, find_label_file, finish, index_files, patient_split, read_table,
    report_missing,
)

__all__ = ["FRACTURE_CLASSES", "LABEL_FILES", "load_grazpedwri_fracture"]

LABEL_FILES = ("dataset.csv",)
FRACTURE_CLASSES = ("no-fracture", "fracture")


def _flag(value: str) -> int:
    v = value.strip().lower()
    if v in ("", "0", "0.0", "false", "nan"):
        return 0
    if v in ("1", "1.0", "true"):
        return 1
    raise ValueError(value)


def load_grazpedwri_fracture(root: str | os.PathLike[str], *, labels: str | os.PathLike[str] | None = None,
                             test_fraction: float = 0.2, salt: str = SPLIT_SALT,
                             allow_missing: bool = False) -> list[Sample]:
    """GRAZPEDWRI-DX fracture samples; see the module docstring."""
    root = Path(root)
    table_path = find_label_file(root, LABEL_FILES, labels)
    rows = read_table(table_path)
    stem_col = column(rows, "filestem", source=table_path)
    pid_col = column(rows, "patient_id", source=table_path)
    frac_col = column(rows, "fracture_visible", source=table_path)
    images = index_files(root, (".png",), dirs=("images_part*", "images"))
    samples, missing = [], []
    for r in rows:
        stem, pid = r[stem_col], r[pid_col]
        try:
            label = _flag(r[frac_col])
        except ValueError:
            raise TaskDataError(f"{table_path}: {stem}: fracture_visible {r[frac_col]!r} is not 1 or empty") from None
        if not pid:
            raise TaskDataError(f"{table_path}: {stem}: empty patient_id")
        path = images.get(stem)
        if path is None:
            missing.append(f"{stem}.png")
            continue
        samples.append(Sample(str(path.resolve()), label, pid, patient_split(pid, test_fraction, salt)))
    report_missing("GRAZPEDWRI-DX", missing, len(rows), allow_missing)
    return finish("GRAZPEDWRI-DX fracture", samples)
