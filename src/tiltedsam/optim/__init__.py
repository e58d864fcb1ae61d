"""Optimizer shells: SAM/ASAM, TSAM, the baselines, the registry and t schedules."""

from .base import Evaluation, PerturbationOptimizer, StepDiagnostics, frozen_batchnorm_stats
from .erm import ERM
from .sam import SAM
from .tsam import TSAM

__all__ = ["PerturbationOptimizer", "Evaluation", "StepDiagnostics", "frozen_batchnorm_stats", "ERM", "SAM", "TSAM"]
