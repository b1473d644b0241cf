"""Integrators on any tensor objective: TDLRT and the methods it is compared with.

Every step is a pure function ``(tucker, grad, lr, ..., state=None) -> (tucker,
state)`` of the dense Euclidean gradient at the current point (``state`` None for a
method that keeps none or when none was given); :func:`integrate` runs them on an
objective.
"""

from .bug import (
    bug_step,
    k_gradients_from_factor_gradients,
    parallel_bug_step,
    parallel_bug_update,
)
from .driver import (
    METHODS,
    STOP_REASONS,
    History,
    IntegrationError,
    IntegrationResult,
    integrate,
)
from .growth import RankGrowth, normal_directions
from .linesearch import Armijo
from .rgd import rgd_step
from .state import (
    Adam,
    Momentum,
    OptimizerState,
    basis_buffers,
    core_buffer,
    registered_rules,
    rule_class,
)
from .tdlrt import tdlrt_step
from .vanilla import vanilla_step

__all__ = [
    "METHODS",
    "STOP_REASONS",
    "Adam",
    "Armijo",
    "History",
    "IntegrationError",
    "IntegrationResult",
    "Momentum",
    "OptimizerState",
    "RankGrowth",
    "basis_buffers",
    "bug_step",
    "core_buffer",
    "integrate",
    "k_gradients_from_factor_gradients",
    "normal_directions",
    "parallel_bug_step",
    "parallel_bug_update",
    "registered_rules",
    "rgd_step",
    "rule_class",
    "tdlrt_step",
    "vanilla_step",
]
