"""Former home of :mod:`tiltedsam.functional` (the layer below the optimizers), kept for old imports."""

from ..functional import *  # noqa: F401,F403
