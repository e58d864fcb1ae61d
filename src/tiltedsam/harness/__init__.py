"""Experiment harness: data sets and models (``data``, ``models``), typed run configs (``config``), one
training run (``train``), checkpoints, grid sweeps in SQLite (``sweep``), reports and plots (``report``)
and the main comparison job (``compare``).

Import-light on purpose: only torch and numpy are imported here; scikit-learn, PIL and tqdm are imported
inside the loaders that need them, and matplotlib only by the plotting modules.
"""

from .data import DATASETS, DataSplits, InMemoryDataset, apply_label_noise, load_dataset
from .models import MODELS, build_model, count_parameters

__all__ = [
    "DATASETS",
    "DataSplits",
    "InMemoryDataset",
    "apply_label_noise",
    "load_dataset",
    "MODELS",
    "build_model",
    "count_parameters",
]
