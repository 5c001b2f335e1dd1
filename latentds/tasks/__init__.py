"""Adapters for the paper's five fine-grained classification tasks.

Each reads a dataset in its own published layout (users download the data themselves) and
returns a sorted list of :class:`Sample` ``(path, label, patient_id, split)`` whose train/test
split is patient-disjoint: a deterministic hash of the patient id (:func:`patient_split`).

    from latentds.tasks import TASKS, load_task, to_imagefolder
    samples = load_task("cmmd-malignancy", "/data/CMMD")
    trees = to_imagefolder(samples, "/data/trees/cmmd-malignancy",
                           class_names=TASKS["cmmd-malignancy"].class_names)
    train = LatentDataset(trees["train"], codec="kl-f8c4", cache="/data/cache", allow_empty=True)

See docs/flops.md (appendix "real-task adapters") for the layouts and label rules.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any

from .base import (
    SPLIT_SALT, SPLITS, Sample, TaskDataError, TaskInfo, class_folder_names, link_name, patient_split, read_table,
    to_imagefolder,
)
from .boneage import BONEAGE_CLASSES, boneage_class, load_rsna_boneage
from .cmmd import CALCIFICATION_CLASSES, MALIGNANCY_CLASSES, load_cmmd
from .grazpedwri import FRACTURE_CLASSES, load_grazpedwri_fracture
from .vindr import BIRADS_CLASSES, load_vindr_birads

TASKS: dict[str, TaskInfo] = {t.name: t for t in (
    TaskInfo("cmmd-malignancy", "CMMD", MALIGNANCY_CLASSES,
             "CMMD mammograms: benign (0) vs malignant (1)", partial(load_cmmd, target="malignancy")),
    TaskInfo("cmmd-calcification", "CMMD", CALCIFICATION_CLASSES,
             "CMMD mammograms: mass only (0) vs calcification or both (1)", partial(load_cmmd, target="calcification")),
    TaskInfo("vindr-birads", "VinDr-Mammo", BIRADS_CLASSES,
             "VinDr-Mammo mammograms: breast BI-RADS 1..5 (labels 0..4)", load_vindr_birads),
    TaskInfo("rsna-boneage", "RSNA Pediatric Bone Age", BONEAGE_CLASSES,
             "hand radiographs: bone age in years, 0..19 (20 classes)", load_rsna_boneage),
    TaskInfo("grazpedwri-fracture", "GRAZPEDWRI-DX", FRACTURE_CLASSES,
             "pediatric wrist radiographs: fracture visible (1) or not (0)", load_grazpedwri_fracture),
)}


def load_task(name: str, root: str | os.PathLike[str], **kwargs: Any) -> list[Sample]:
    """Samples of task ``name`` (a key of :data:`TASKS`) from the dataset at ``root``.
    Keyword arguments go to the adapter (``labels=``, ``test_fraction=``, ``salt=``, ...)."""
    try:
        task = TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from None
    return task.loader(root, **kwargs)


__all__ = [
    "BIRADS_CLASSES", "BONEAGE_CLASSES", "CALCIFICATION_CLASSES", "FRACTURE_CLASSES", "MALIGNANCY_CLASSES",
    "SPLITS", "SPLIT_SALT", "Sample", "TASKS", "TaskDataError", "TaskInfo", "boneage_class", "class_folder_names",
    "link_name", "load_cmmd", "load_grazpedwri_fracture", "load_rsna_boneage", "load_task", "load_vindr_birads",
    "patient_split", "read_table", "to_imagefolder",
]
