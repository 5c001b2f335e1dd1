"""VinDr-Mammo (PhysioNet): five-class BI-RADS task.

Published layout::

    <root>/breast-level_annotations.csv
    <root>/images/<study_id>/<image_id>.dicom

``breast-level_annotations.csv`` has one row per image: ``study_id``, ``series_id``,
``image_id``, ``laterality``, ``view_position``, ``height``, ``width``, ``breast_birads``
(``"BI-RADS 1"`` .. ``"BI-RADS 5"``), ``breast_density``, ``split`` (``training``/``test``).
Label = BI-RADS - 1 (0..4). VinDr-Mammo publishes no patient identifier; one study is one
patient's exam, so ``study_id`` serves as the patient id. The split is the hash of that id
(like every task) unless ``official_split=True``, which keeps the published
``training``/``test`` split (also exam-disjoint).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .base import (
    SPLIT_SALT, Sample, TaskDataError, column, find_label_file, finish, patient_split, read_table, report_missing,
)

__all__ = ["BIRADS_CLASSES", "LABEL_FILES", "load_vindr_birads"]

LABEL_FILES = ("breast-level_annotations.csv",)
BIRADS_CLASSES = ("birads-1", "birads-2", "birads-3", "birads-4", "birads-5")


def load_vindr_birads(root: str | os.PathLike[str], *, labels: str | os.PathLike[str] | None = None,
                      test_fraction: float = 0.2, salt: str = SPLIT_SALT, official_split: bool = False,
                      allow_missing: bool = False) -> list[Sample]:
    """VinDr-Mammo BI-RADS samples; see the module docstring."""
    root = Path(root)
    table_path = find_label_file(root, LABEL_FILES, labels)
    rows = read_table(table_path)
    study_col = column(rows, "study_id", source=table_path)
    image_col = column(rows, "image_id", source=table_path)
    birads_col = column(rows, "breast_birads", source=table_path)
    split_col = column(rows, "split", source=table_path) if official_split else ""
    samples, missing = [], []
    for r in rows:
        study, image = r[study_col], r[image_col]
        m = re.search(r"([1-5])\s*$", r[birads_col])
        if not m:
            raise TaskDataError(f"{table_path}: image {image}: breast_birads {r[birads_col]!r} is not BI-RADS 1..5")
        path = root / "images" / study / f"{image}.dicom"
        if not path.is_file():
            missing.append(str(path))
            continue
        if official_split:
            s = r[split_col].strip().lower()
            if s not in ("training", "train", "test"):
                raise TaskDataError(f"{table_path}: image {image}: split {r[split_col]!r} is not training/test")
            split = "test" if s == "test" else "train"
        else:
            split = patient_split(study, test_fraction, salt)
        samples.append(Sample(str(path.resolve()), int(m.group(1)) - 1, study, split))
    report_missing("VinDr-Mammo", missing, len(rows), allow_missing)
    return finish("VinDr-Mammo BI-RADS", samples)
