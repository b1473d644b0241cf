"""tuckerflow: geometry-aware, rank-adaptive training of tensors in Tucker format.

The core is written once against TensorLy and runs on any of its backends (NumPy,
PyTorch, CuPy); switch per run with :func:`use_backend`. Tucker tensors are TensorLy's
:class:`~tensorly.tucker_tensor.TuckerTensor` ``(core, factors)`` pairs with orthonormal
factors.
"""

from .backend import available_backends, use_backend
from .hosvd import hosvd, truncate
from .random import random_tucker
from .ranks import parameter_count
from .retraction import retract
from .tangent import TangentVector, inner, project, random_tangent, tangent_to_tensor

__version__ = "0.1.0"

__all__ = [
    "TangentVector",
    "available_backends",
    "hosvd",
    "inner",
    "parameter_count",
    "project",
    "random_tangent",
    "random_tucker",
    "retract",
    "tangent_to_tensor",
    "truncate",
    "use_backend",
]
