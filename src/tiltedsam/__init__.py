"""tiltedsam: Tilted Sharpness-Aware Minimization (TSAM) for PyTorch.

``from tiltedsam import TSAM, SAM`` for the optimizers, :mod:`tiltedsam.tilt` for the math,
:func:`create_optimizer` / :func:`list_optimizers` for every optimizer by name.
"""

from ._version import __version__
from .optim import (
    ERM,
    ESAM2,
    DistributedSync,
    PGN,
    RSAM,
    SAM,
    TSAM,
    Evaluation,
    PerturbationOptimizer,
    StepDiagnostics,
    TiltScheduler,
    frozen_batchnorm_stats,
)
from .optim.registry import create_optimizer, equal_compute_steps, grad_evals_per_step, list_optimizers
from .tilt import (
    NonFiniteLossError,
    TiltedGradientAccumulator,
    effective_sample_size,
    tilted_mean,
    tilted_stats,
    tilted_weights,
)

__all__ = [
    "__version__",
    "TSAM",
    "SAM",
    "ERM",
    "ESAM2",
    "DistributedSync",
    "PGN",
    "RSAM",
    "TiltScheduler",
    "equal_compute_steps",
    "PerturbationOptimizer",
    "Evaluation",
    "StepDiagnostics",
    "frozen_batchnorm_stats",
    "create_optimizer",
    "list_optimizers",
    "grad_evals_per_step",
    "tilted_mean",
    "tilted_weights",
    "tilted_stats",
    "effective_sample_size",
    "TiltedGradientAccumulator",
    "NonFiniteLossError",
]
