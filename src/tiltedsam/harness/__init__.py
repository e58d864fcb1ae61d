"""Experiment harness: data sets, models (this package), and the train/sweep/report layers on top.

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
