"""Fixed-point solvers and the implicit (deep-equilibrium) layer.

Every solver has the signature ``solver(f, z0, cfg) -> (z, stats)`` with ``z0`` of shape
``(B, ...)`` and per-sample :class:`SolverStats`; :func:`equilibrium` wraps a solve in an
``autograd.Function`` with implicit (or Jacobian-free) differentiation.
"""

from luser_cli.solvers.anderson import anderson
from luser_cli.solvers.config import EquilibriumConfig, SolverConfig, SolverName
from luser_cli.solvers.equilibrium import SOLVERS, Solver, equilibrium, solve
from luser_cli.solvers.picard import picard
from luser_cli.solvers.stats import SolverStats, summarize

__all__ = [
    "SOLVERS",
    "EquilibriumConfig",
    "Solver",
    "SolverConfig",
    "SolverName",
    "SolverStats",
    "anderson",
    "equilibrium",
    "picard",
    "solve",
    "summarize",
]
