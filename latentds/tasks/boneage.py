"""RSNA Pediatric Bone Age: 20 yearly classes.

Published layout (the challenge's training set, as Kaggle and the RSNA site ship it)::

    <root>/boneage-training-dataset.csv
    <root>/boneage-training-dataset/<id>.png
        (the Kaggle archive nests it once more: boneage-training-dataset/boneage-training-dataset/<id>.png;
         both are accepted)

``boneage-training-dataset.csv``: ``id``, ``boneage`` (months), ``male`` (True/False).
Label = ``floor(boneage / 12)`` clipped to 0..19 (the paper's 20 classes, ages 0..19 years).
Each image is a different child, so ``id`` is the patient id.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from .base import (
    SPLIT_SALT, Sample, TaskDataError, column, find_label_file, finish, patient_split, read_table, report_missing,
)

__all__ = ["boneage_class", "BONEAGE_CLASSES", "LABEL_FILES", "load_rsna_boneage", "NUM_CLASSES"]

LABEL_FILES = ("boneage-training-dataset.csv",)
NUM_CLASSES = 20
BONEAGE_CLASSES = tuple(f"age-{k}" for k in range(NUM_CLASSES))


def boneage_class(months: float) -> int:
    """Yearly class of a bone age in months: floor(months / 12), clipped to 0..19."""
    if not math.isfinite(months):
        raise ValueError(f"bone age must be finite, got {months}")
    return int(min(max(math.floor(months / 12), 0), NUM_CLASSES - 1))


def load_rsna_boneage(root: str | os.PathLike[str], *, labels: str | os.PathLike[str] | None = None,
                      test_fraction: float = 0.2, salt: str = SPLIT_SALT, allow_missing: bool = False) -> list[Sample]:
    """RSNA Bone Age samples; see the module docstring."""
    root = Path(root)
    table_path = find_label_file(root, LABEL_FILES, labels)
    rows = read_table(table_path)
    id_col = column(rows, "id", source=table_path)
    age_col = column(rows, "boneage", "bone_age", source=table_path)
    folders = [root / "boneage-training-dataset" / "boneage-training-dataset", root / "boneage-training-dataset"]
    samples, missing = [], []
    for r in rows:
        ident = r[id_col]
        try:
            label = boneage_class(float(r[age_col]))
        except ValueError as e:
            raise TaskDataError(f"{table_path}: id {ident}: boneage {r[age_col]!r} is not a number of months") from e
        path = next((d / f"{ident}.png" for d in folders if (d / f"{ident}.png").is_file()), None)
        if path is None:
            missing.append(str(folders[-1] / f"{ident}.png"))
            continue
        samples.append(Sample(str(path.resolve()), label, ident, patient_split(ident, test_fraction, salt)))
    report_missing("RSNA Bone Age", missing, len(rows), allow_missing)
    return finish("RSNA Bone Age", samples)
