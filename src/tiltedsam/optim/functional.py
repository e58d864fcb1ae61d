"""Former home of :mod:`tiltedsam.functional` (the layer below the optimizers); re-exported for old imports."""

from ..functional import *  # noqa: F401,F403
from ..functional import NORM_EPS  # noqa: F401
