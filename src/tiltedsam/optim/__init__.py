"""Optimizer shells: SAM/ASAM, TSAM, the baselines, the registry and t schedules."""

from .base import Evaluation, PerturbationOptimizer, StepDiagnostics, frozen_batchnorm_stats
from .distributed import DistributedSync
from .erm import ERM
from .esam2 import ESAM2
from .pgn import PGN
from .rsam import RSAM
from .sam import SAM
from .schedules import TiltScheduler
from .tsam import TSAM

__all__ = ["PerturbationOptimizer", "Evaluation", "StepDiagnostics", "frozen_batchnorm_stats", "ERM", "SAM", "TSAM",
           "ESAM2", "PGN", "RSAM", "TiltScheduler", "DistributedSync"]
