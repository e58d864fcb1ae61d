"""The paper's 1-D toy problems (Fig. 1, Sec. 3.2; Fig. 5 and 6, App. A), computed exactly.

* :mod:`.problems`: the two losses (``"fig1"``, ``"fig5"``) and :func:`as_problem` for your own.
* :mod:`.objectives`: exact ERM / SAM / TSAM objectives and gradients by quadrature
  (:func:`objective`, :func:`gradient`), the SAM inner maximum, neighbourhood statistics and
  global minimisers.
* :mod:`.descent`: gradient-descent trajectories, exact or with the sampled TSAM estimator.
* :mod:`.figures`: the figures and tables of ``tiltedsam toy fig1|fig5|fig6``.
"""

from .descent import DESCENT_KINDS, Run, Trajectory, descend, descend_many
from .objectives import (
    KINDS,
    MEASURES,
    Minimiser,
    global_minimiser,
    gradient,
    neighbourhood_stats,
    objective,
    sam_maximiser,
)
from .problems import PROBLEMS, ToyProblem, as_problem

__all__ = [
    "KINDS",
    "MEASURES",
    "DESCENT_KINDS",
    "PROBLEMS",
    "ToyProblem",
    "as_problem",
    "objective",
    "gradient",
    "sam_maximiser",
    "neighbourhood_stats",
    "global_minimiser",
    "Minimiser",
    "Run",
    "Trajectory",
    "descend",
    "descend_many",
]
