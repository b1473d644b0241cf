"""tuckerflow: geometry-aware, rank-adaptive training of tensors in Tucker format.

The core is written once against TensorLy and runs on any of its backends (NumPy,
PyTorch, CuPy); switch per run with :func:`use_backend`. Tucker tensors are TensorLy's
:class:`~tensorly.tucker_tensor.TuckerTensor` ``(core, factors)`` pairs with orthonormal
factors.
"""

from .backend import available_backends, use_backend
from .hosvd import hosvd, truncate
from .integrators import (
    Adam,
    Armijo,
    IntegrationError,
    IntegrationResult,
    Momentum,
    OptimizerState,
    RankGrowth,
    basis_buffers,
    bug_step,
    core_buffer,
    integrate,
    normal_directions,
    parallel_bug_step,
    parallel_bug_update,
    registered_rules,
    rgd_step,
    rule_class,
    tdlrt_step,
    vanilla_step,
)
from .linalg import host_factorizations, set_host_factorizations
from .random import random_tucker
from .ranks import RankRule, parameter_count
from .retraction import retract
from .tangent import (
    TangentVector,
    inner,
    project,
    projected_norm,
    random_tangent,
    tangent_to_tensor,
)

__version__ = "0.1.0"

__all__ = [
    "Adam",
    "Armijo",
    "IntegrationError",
    "IntegrationResult",
    "Momentum",
    "OptimizerState",
    "RankGrowth",
    "RankRule",
    "TangentVector",
    "available_backends",
    "basis_buffers",
    "bug_step",
    "core_buffer",
    "hosvd",
    "host_factorizations",
    "inner",
    "integrate",
    "normal_directions",
    "parallel_bug_step",
    "parallel_bug_update",
    "parameter_count",
    "project",
    "projected_norm",
    "random_tangent",
    "random_tucker",
    "registered_rules",
    "retract",
    "rgd_step",
    "rule_class",
    "set_host_factorizations",
    "tangent_to_tensor",
    "tdlrt_step",
    "truncate",
    "use_backend",
    "vanilla_step",
]
