"""Flatness analysis of trained solutions (the TSAM paper, Sec. 5.2, Fig. 2, Table 3).

* :func:`neighborhood_loss`: mean/variance (and t-weighted mean/variance, Def. 2) of the loss under
  Gaussian parameter noise, with standard errors (Fig. 2).
* :func:`hessian_eigenvalues`: top-k (and bottom) Hessian eigenvalues by Lanczos with residuals.
* :func:`hessian_trace`: Hutchinson / Hutch++ trace with a standard error.
* :func:`cross_objective` / :func:`cross_objective_table`: ERM, SAM and TSAM losses (Table 3).
* :func:`write_flatness_report`: all of the above for several models -> report.json, report.md, fig2.png.

Every function restores the model's parameters, buffers and train/eval modes exactly, and takes
``mode="eval"`` (default) or ``"train"`` for BatchNorm/dropout behaviour during the measurement.
This package does not import :mod:`tiltedsam.harness`.
"""

from ._common import MODES, preserved_model_state, take_batches
from .cross_objective import CrossObjectiveTable, ObjectiveLosses, cross_objective, cross_objective_table
from .hessian import (
    HessianEigenResult,
    HessianOperator,
    HessianTraceResult,
    hessian_eigenvalues,
    hessian_trace,
    lanczos,
)
from .neighborhood import NeighborhoodLossResult, SigmaStatistics, TiltedStatistics, neighborhood_loss
from .report import ReportSettings, analyze_models, plot_neighborhood_curves, write_flatness_report

__all__ = [
    "MODES",
    "preserved_model_state",
    "take_batches",
    "neighborhood_loss",
    "NeighborhoodLossResult",
    "SigmaStatistics",
    "TiltedStatistics",
    "hessian_eigenvalues",
    "HessianEigenResult",
    "hessian_trace",
    "HessianTraceResult",
    "HessianOperator",
    "lanczos",
    "cross_objective",
    "cross_objective_table",
    "ObjectiveLosses",
    "CrossObjectiveTable",
    "ReportSettings",
    "analyze_models",
    "write_flatness_report",
    "plot_neighborhood_curves",
]
