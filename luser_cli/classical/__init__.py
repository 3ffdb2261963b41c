"""Classical reconstructions: the baselines every learned model is compared to.

- :func:`tv_reconstruct`: total-variation regularised least squares by PDHG (any operator).
- :func:`reconstruct_classical`: ``input`` / ``adjoint`` / ``fbp`` / ``zero-filled`` / ``tv`` for a
  task, with tuned per-task TV defaults relative to the data's intensity scale.
"""

from luser_cli.classical.methods import (
    CLASSICAL_METHODS,
    TV_DEFAULTS,
    absolute_tv_weight,
    default_method,
    intensity_scale,
    methods_for,
    reconstruct_classical,
)
from luser_cli.classical.tv import total_variation, tv_objective, tv_reconstruct

__all__ = [
    "CLASSICAL_METHODS",
    "TV_DEFAULTS",
    "absolute_tv_weight",
    "default_method",
    "intensity_scale",
    "methods_for",
    "reconstruct_classical",
    "total_variation",
    "tv_objective",
    "tv_reconstruct",
]
