"""``TDLRT``: a ``torch.optim.Optimizer`` whose Tucker weights take the TDLRT step.

Every Tucker layer (:class:`~tuckerflow.nn.TuckerLayer`) whose parameters are in the
optimizer is updated by the core integrators under TensorLy's pytorch backend, with
the state of the group's optimizer rule (:mod:`tuckerflow.integrators.state`); every
other parameter (biases, BatchNorm, dense layers) takes the matching ordinary update
(SGD with momentum, or Adam: ``torch.optim``'s functional ``sgd``/``adam`` with
``foreach=True`` on all of a group's parameters at once, giving the iterates and the
state of ``torch.optim.SGD``/``Adam``; another rule's from
:func:`register_ordinary_rule`). Ranks change in place: the layer's
``Parameter`` objects are kept and their data swapped.

How each Tucker layer gets its gradient (``method``):

* ``"tdlrt"`` (needs ``implementation="dense"``): the dense layer's backward yields
  ``G = dL/dW`` of the rebuilt weight; :func:`tuckerflow.tdlrt_step` uses it for both
  the K-steps and the Galerkin core step: one forward and one backward per step.
* ``"parallel"``: :func:`tuckerflow.parallel_bug_step` from ``G`` (dense layers), or,
  for factorized layers, from the core and factor gradients of one ordinary backward
  pass (:func:`tuckerflow.integrators.k_gradients_from_factor_gradients`).
* ``"auto"`` (default): ``"tdlrt"`` for dense layers, ``"parallel"`` for factorized.
* ``"vanilla"``: no manifold step; core and factors are ordinary parameters.

Weight decay acts on the represented weight ``W`` (its projection is ``wd * C`` on
the core and ``wd * K_i`` on the K-steps), never on the orthonormal bases.

Standard training-loop tools work as with ``nn.Linear`` and ``torch.optim.SGD``: a
dense layer's ``dL/dW`` is the ``.grad`` of its ``weight_delta`` parameter, which the
optimizer adds to the layer's parameter group (it never updates it), so
``torch.amp.GradScaler`` (``scale``/``unscale_``/``step``/``update``, including its
inf checks and backoff), ``clip_grad_norm_(model.parameters(), ...)`` and
``model.zero_grad()`` act on exactly what the step uses; ``weight_delta`` is left out
of the optimizer's ``state_dict`` so checkpoints keep their layout.

Precision: the step computes in float32 for float16/bfloat16 layers (core, factors
and gradient upcast, the new core and factors rounded back to the layer's dtype; the
momentum/Adam state stays float32) and in the layer's dtype otherwise, whatever dtype
the gradient arrives in, and outside ``torch.autocast`` even when called inside it.

The factors must be orthonormal. A factor written by anything but this optimizer
(another optimizer, ``copy_``, ``load_state_dict``) is checked at the next step; one
that is not orthonormal is repaired by :meth:`TuckerLayer.orthonormalize` (the weight
is kept) with a warning naming the layer.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import warnings
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
from tensorly.tucker_tensor import TuckerTensor
from torch import nn
from torch.optim.adam import adam as functional_adam
from torch.optim.sgd import sgd as functional_sgd

import tuckerflow as tf
from tuckerflow._checks import available_ranks, check_tol
from tuckerflow.contractions import GradientContractions
from tuckerflow.integrators._blocks import AugmentedStep
from tuckerflow.integrators.bug import (
    parallel_augment_from_factor_gradients,
)
from tuckerflow.integrators.multi import (
    decompose_multi,
    parallel_augment_multi,
    tdlrt_augment_multi,
    truncate_multi,
)
from tuckerflow.integrators.state import OptimizerState, rule_class
from tuckerflow.profiling import phase
from tuckerflow.ranks import (
    GLOBAL_CRITERIA,
    parameter_count,
    ranks_from_global_budget,
)

from .distributed import prepare_ddp
from .layers import (
    TuckerLayer,
    autocast_off,
    ddp_parameter_ids,
    factorization_dtype,
    layers_by_parameter,
    reconstruct,
)

__all__ = ["TDLRT", "linear_budget", "register_ordinary_rule"]

METHODS = ("auto", "tdlrt", "parallel", "vanilla")


#: Per-parameter optimizer-state entries of the Tucker update (packed core/K state,
#: the basis_update_every cycle), kept in their own dtypes by load_state_dict.
_TUCKER_KEYS = ("tucker_state", "basis_cycle")


def _on_device(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor in it moved to ``device``, dtypes kept."""
    if isinstance(value, torch.Tensor):
        return value.to(device=device)
    if isinstance(value, dict):
        return {k: _on_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_on_device(v, device) for v in value)
    return value


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _pack(state: Any) -> dict[str, Any]:
    """Core optimizer state -> plain dict of tensors and numbers (state_dict-safe)."""
    return state.pack()


def _unpack(packed: dict[str, Any]) -> Any:
    """A :func:`_pack` dict (or one of the format before named rules) -> state."""
    return OptimizerState.unpack(packed)


# ------------------------------------------------------------ optimizer rules
def _sgd_momentum(
    parameters: list,
    grads: list,
    states: list,
    *,
    lr: float,
    weight_decay: float,
    beta: float,
    nesterov: bool,
) -> None:
    """The ordinary counterpart of :class:`~tuckerflow.Momentum`:
    ``torch.optim.SGD(momentum=beta, nesterov=nesterov)``."""
    buffers = [state.get("momentum_buffer") for state in states]
    functional_sgd(
        parameters,
        grads,
        buffers,  # None entries are filled with new buffers
        has_sparse_grad=any(grad.is_sparse for grad in grads),  # (embeddings)
        foreach=True,
        weight_decay=weight_decay,
        momentum=beta,
        lr=lr,
        dampening=0.0,
        nesterov=nesterov,
        maximize=False,
    )
    for state, buffer in zip(states, buffers):
        state["momentum_buffer"] = buffer


def _adam(
    parameters: list,
    grads: list,
    states: list,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float,
) -> None:
    """The ordinary counterpart of :class:`~tuckerflow.Adam`:
    ``torch.optim.Adam(betas=betas, eps=eps)``."""
    exp_avgs, exp_avg_sqs, steps = [], [], []
    for parameter, state in zip(parameters, states):
        if not state:
            # on the host, in torch.optim's scalar dtype (as Adam's own)
            state["step"] = torch.tensor(0.0, dtype=_scalar_dtype())
            state["exp_avg"] = torch.zeros_like(
                parameter, memory_format=torch.preserve_format
            )
            state["exp_avg_sq"] = torch.zeros_like(
                parameter, memory_format=torch.preserve_format
            )
        exp_avgs.append(state["exp_avg"])
        exp_avg_sqs.append(state["exp_avg_sq"])
        steps.append(state["step"])
    beta1, beta2 = betas
    functional_adam(
        parameters,
        grads,
        exp_avgs,
        exp_avg_sqs,
        [],
        steps,
        foreach=True,
        amsgrad=False,
        beta1=beta1,
        beta2=beta2,
        lr=lr,
        weight_decay=weight_decay,
        eps=eps,
        maximize=False,
    )


# rule name -> the update of the ordinary parameters (torch.optim's functional form)
_ORDINARY_RULES: dict[str, Callable[..., None]] = {
    "momentum": _sgd_momentum,
    "adam": _adam,
}


def register_ordinary_rule(name: str, step: Callable[..., None]) -> None:
    """Give an optimizer rule its update of the ordinary parameters.

    :class:`TDLRT` updates every parameter that is not part of a Tucker layer
    (biases, norms, dense layers) with the ordinary counterpart of the group's rule;
    ``"momentum"`` and ``"adam"`` have theirs (``torch.optim``'s functional
    ``sgd``/``adam`` with ``foreach=True``). A rule defined elsewhere (a subclass of
    :class:`~tuckerflow.OptimizerState`) registers its own here before the
    optimizer is built; a group with such a rule and ordinary parameters but no
    registered update is refused.

    Parameters
    ----------
    name : str
        The rule's registered name (``OptimizerState`` subclass attribute ``name``).
    step : callable
        ``step(parameters, grads, states, *, lr, weight_decay, **hyper)``: updates
        the list of parameters in place (under ``torch.no_grad``) from their
        gradients. ``states`` holds one dict per parameter, the optimizer's
        ``state[p]`` (saved by ``state_dict``), for the rule's buffers;
        ``weight_decay`` is the coupled L2 factor (add ``weight_decay * p`` to the
        gradient); ``hyper`` are the keywords of the rule's ``init`` with its
        defaults filled in.

    Raises
    ------
    TypeError
        If ``name`` is not a str or ``step`` is not callable.
    """
    if not isinstance(name, str) or not callable(step):
        raise TypeError(
            f"register_ordinary_rule needs a rule name and a callable, got {name!r} "
            f"and {step!r}"
        )
    _ORDINARY_RULES[name] = step


def _rule_spec(value: Any) -> tuple[str, dict[str, Any]] | None:
    """``TDLRT(rule=...)`` -> ``(name, hyper)`` (plain data) or None."""
    if value is None:
        return None
    if isinstance(value, str):
        name, hyper = value, {}
    elif isinstance(value, type) and issubclass(value, OptimizerState):
        name, hyper = value.configure()
    elif (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], dict)
    ):
        name, hyper = value[0], dict(value[1])
    else:
        raise TypeError(
            "rule must be a registered rule's name, its OptimizerState class, or "
            "(name, hyper-parameters) as returned by e.g. "
            f"tuckerflow.Adam.configure(betas=(0.9, 0.99)); got {_short(value)}"
            + (
                " (a state built for one point: pass its class or its name, the "
                "optimizer builds one per layer)"
                if isinstance(value, OptimizerState)
                else ""
            )
        )
    cls = rule_class(name)
    _, hyper = cls.configure(**hyper)  # unknown keywords: TypeError
    return name, hyper


def _rule_arguments(name: str, hyper: dict[str, Any]) -> dict[str, Any]:
    """The keywords of the rule's ``init`` (without the point), defaults filled."""
    signature = inspect.signature(rule_class(name).init)
    bound = signature.bind(None, **hyper)
    bound.apply_defaults()
    arguments: dict[str, Any] = {}
    for position, (key, value) in enumerate(bound.arguments.items()):
        if position == 0:  # the point
            continue
        if signature.parameters[key].kind is inspect.Parameter.VAR_KEYWORD:
            arguments.update(value)
        else:
            arguments[key] = value
    return arguments


def _check_rule(name: str, hyper: dict[str, Any]) -> None:
    """Build the rule's state for a 1 x 1 point: its own checks of ``hyper``."""
    with tf.use_backend("pytorch"):
        point = (torch.zeros(1, 1), [torch.ones(1, 1), torch.ones(1, 1)])
        rule_class(name).init(point, **hyper)


def _orthonormality_tolerances(factor: torch.Tensor) -> tuple[float, float]:
    """``(repair, warn)`` thresholds on ``max |U^T U - I|`` of a factor with ``n`` rows.

    Above ``10 n eps`` of its dtype the factor is repaired (the optimizer's own factors
    stay below ``0.5 n eps``: measured in float32 over 150 steps, n <= 1024). A factor
    rounded in a coarser format (built in float32, then ``model.double()``) is repaired
    silently; the warning is for errors above ``10 n eps`` of float32 (or of the
    factor's own dtype, if coarser), which rounding cannot explain: another
    optimizer's steps leave errors of the size of its step.
    """
    rows = factor.shape[0]
    eps = torch.finfo(factor.dtype).eps
    return 10 * rows * eps, 10 * rows * max(eps, torch.finfo(torch.float32).eps)


class TDLRT(torch.optim.Optimizer):
    """Geometry-aware, rank-adaptive optimizer for models with Tucker layers.

    Every Tucker layer (:class:`~tuckerflow.nn.TuckerLayer`, weight
    ``W = C ×_i U_i`` with orthonormal factors) takes the TDLRT step of Zangrando et
    al. [1]_ (built on the basis-update & Galerkin integrator [3]_), or the parallel
    BUG step [2]_ where the dense gradient is never formed; every other parameter
    takes SGD (with momentum [4]_ [5]_) or Adam [6]_. One :meth:`step`, with
    ``h = lr`` and ``wd = weight_decay`` (see :ref:`tdlrt-step` and :ref:`variants`
    in the concepts guide)::

        for every Tucker layer W = C ×_i U_i in the groups (method != 'vanilla'):
            1. gradient
               dense forward:       G = weight_delta.grad = dL/dW, plus wd W
               factorized forward:  dL/dC, dL/dU_i of the ordinary backward pass
                                    (plus those of wd/2 ||W||^2), and
                                    dL/dK_i = dL/dU_i pinv(S_i^T)   (cut at rcond)
            2. K-steps, every mode i: C_(i)^T = Q_i S_i^T,
               K_i = U_i S_i - h dL/dK_i       (dL/dK_i = G_(i) V_i from G)
            3. augment: Û_i = orth([U_i, K_i])             (at most 2 r_i columns)
            4. core step
               'tdlrt':     Ĉ = C ×_i (Û_i^T U_i) - h G ×_i Û_i^T   (Galerkin, same G)
               'parallel':  Ĉ = C - h dL/dC in the old block (dL/dC = G ×_i U_i^T
                            from G), the new directions of the K_i in the blocks
                            where one mode is new, zero elsewhere
               (momentum/Adam act on the K and core updates; their buffers follow
               every change of basis and rank)
            5. truncate: new ranks from tol (||W_new - Ĉ ×_i Û_i|| <= tol ||Ĉ||)
               within [min_rank, max_rank], or with budget jointly over all layers;
               C, U_i <- the truncated HOSVD of Ĉ in the bases Û_i
            with basis_update_every = k > 1, in a cycle of k steps of the layer:
               step 1 of the cycle:  1-4, then C, U_i <- Ĉ, Û_i (no truncation)
               steps 2..k:           C <- C - h (dL/dC + wd C), the U_i fixed
                                     (dL/dC = G ×_i U_i^T from G)
               step k:               then 5. truncate (C in the bases U_i)
        for every other parameter p with a gradient (biases, norms, dense layers,
        and the core and factors of 'vanilla' layers):
            g = p.grad + wd p
            SGD:   b = momentum b + g (b = g at first);  p -= h b
                   (nesterov: p -= h (g + momentum b));  without momentum p -= h g
            Adam:  m = beta1 m + (1 - beta1) g,  v = beta2 v + (1 - beta2) g^2,
                   p -= h m / (1 - beta1^t) / (sqrt(v / (1 - beta2^t)) + eps)
            another rule (rule=...): its registered ordinary update
        a non-finite loss or gradient anywhere: skip the whole step (RuntimeWarning)

    How each Tucker layer gets its gradient, ``weight_delta`` and the repair of
    factors written by something else are described in the module docstring
    (:mod:`tuckerflow.nn.optim`).

    Parameters
    ----------
    params : iterable of Tensor or dict, or nn.Module
        As for any torch optimizer: parameters, or parameter groups (dicts with
        ``"params"`` and any of ``lr``, ``tol``, ``relative``, ``momentum``,
        ``nesterov``, ``weight_decay``, ``adam``, ``betas``, ``eps``, ``rule``,
        ``method``, ``rcond``, ``basis_update_every`` overriding the defaults
        below). A module means
        ``module.parameters()`` and lets messages name its Tucker layers. All of a
        Tucker layer's core and factors must be in one group.
    lr : float
        Step size ``h > 0`` of every update (no default): the Tucker steps and SGD
        move by ``h`` times a gradient, Adam by at most about ``h`` per entry.
        It is in the units of dense SGD on the weight ``W``: a learning rate that
        fine-tunes the dense network is the place to start. A learning rate of
        vanilla factor SGD (``method="vanilla"``, tltorch) means a larger step: its
        factor step moves ``W`` by about ``h sigma_k^2`` times the gradient along the
        core's ``k``-th direction; see :ref:`choose-lr`.
    tol : float, optional
        Truncation tolerance of every TDLRT step, default 0.1 (when no ``budget``
        is given): the truncated weight is within ``tol * ||Ĉ||`` (the norm of the
        untruncated new weight) of the untruncated step, total over all modes
        (``relative=True``, then in ``[0, 1)``), or within ``tol`` in the units of
        the weight (``relative=False``, then ``>= 0``).
    budget : int or callable, optional
        Instead of ``tol``: the total number of stored Tucker weights
        (``sum over layers of prod(r) + sum_i n_i r_i``, biases excluded) after every
        step; the ranks of all layers are allocated jointly
        (:func:`tuckerflow.ranks.ranks_from_global_budget`). A callable
        ``budget(step) -> int`` is a schedule of the optimizer's step count (e.g.
        :func:`linear_budget`, to shrink a network gradually from its initial size
        instead of in its first step). Default None: ranks from ``tol``.
    budget_criterion : {'tolerance', 'energy', 'energy_per_parameter'}
        How the budget is shared. Default ``'tolerance'``: the smallest common
        relative tolerance that fits; the others drop the singular directions of
        least relative energy (per parameter saved) over all layers.
    relative : bool, default True
        Whether ``tol`` is relative to the norm of the new weight (see ``tol``).
    momentum : float, default 0
        Heavy-ball momentum factor in ``[0, 1)`` for all parameters (Tucker layers:
        on the K and core updates, carried through rank changes).
    nesterov : bool, default False
        Nesterov momentum in the form of ``torch.optim.SGD`` (needs ``momentum >
        0``).
    weight_decay : float, default 0
        L2 penalty factor ``>= 0``: adds the gradient of ``wd/2 ||W||^2`` of the
        represented Tucker weights (``wd W``; ``wd C`` on the core and
        ``wd U_i C_(i) C_(i)^T`` on the factors of factorized layers, never a pull
        of the bases towards zero) and ``wd p`` to every ordinary gradient (coupled,
        as ``torch.optim.SGD``/``Adam``, not AdamW).
    adam : bool, default False
        Use Adam (``betas``, ``eps``) instead of SGD (with ``momentum``).
    betas : (float, float), default (0.9, 0.999)
        Adam's decay rates of the first and second moment estimates, each in
        ``[0, 1)`` (checked when a Tucker layer's Adam state is created, at its
        first step).
    eps : float, default 1e-8
        Adam's term added to the denominator ``sqrt(v)``, in the units of the
        gradient, ``> 0`` (checked like ``betas``).
    rule : str, OptimizerState subclass or (str, dict), optional
        The optimizer rule of every update, instead of the shorthands ``momentum``,
        ``nesterov``, ``adam``, ``betas``, ``eps`` (which stay:
        ``momentum=0.9`` is ``rule=tf.Momentum.configure(beta=0.9)``, ``adam=True``
        is ``rule=tf.Adam.configure(betas=betas, eps=eps)``): a registered rule's
        name (its defaults), its class, or ``(name, hyper-parameters)`` as
        returned by :meth:`tuckerflow.OptimizerState.configure`, e.g.
        ``tf.Adam.configure(betas=(0.9, 0.99))``. Tucker layers
        take the rule's state (:mod:`tuckerflow.integrators.state`, which also
        says how to add a rule); ordinary parameters its counterpart from
        :func:`register_ordinary_rule` (a group with ordinary parameters and a rule
        without one is refused). The hyper-parameters are checked here, by the
        rule's ``init``. Default None: plain SGD, or the shorthands.
    method : {'auto', 'tdlrt', 'parallel', 'vanilla'}, default 'auto'
        ``'tdlrt'`` (dense layers only): K-steps and Galerkin core step from one
        dense gradient ``G``. ``'parallel'``: the parallel BUG step, from ``G`` for
        dense layers, from the core and factor gradients for factorized ones.
        ``'auto'``: ``'tdlrt'`` for dense layers, ``'parallel'`` for factorized
        ones. ``'vanilla'``: no manifold step, the core and factors are ordinary
        parameters (fixed ranks, the factors lose orthonormality).
    rcond : float, optional
        Relative cut-off (a fraction of ``sigma_max(S_i)``, dimensionless) of the
        solve ``dL/dK_i = dL/dU_i pinv(S_i^T)`` of factorized layers; default
        ``sqrt(eps)`` of the dtype. Directions of the core below it get no K-step.
    distributed : bool, optional
        Average the Tucker gradients over a ``torch.distributed`` process group and
        keep all workers identical (default: when a group of several workers is
        initialized); see :mod:`tuckerflow.nn.distributed`.
    basis_update_every : int, default 1
        ``k >= 1``, the number of optimizer steps per basis update of every Tucker
        layer. ``1``: the TDLRT (or parallel BUG) step above in every step. ``k >
        1``: the schedule of Schotthöfer et al.'s public Tucker code [7]_ (the
        single-backward augmented step of [8]_): a cycle of ``k`` steps per layer
        (one forward and backward each) that augments the bases in its first step,
        takes Galerkin steps of the core in the augmented bases in the others, and
        truncates in its last. What it trades: a ``k``-th of the K-steps, QRs and
        SVDs (cheaper steps, see ``benchmarks/basis_update_every.py``) for bases
        that see only every ``k``-th gradient, and ranks decided only every ``k``
        steps; in between a layer holds its augmented point (ranks up to ``2 r_i``,
        above ``max_rank``, and up to about four times the stored weights of a
        matrix, more for higher orders), so ``budget`` and ``tol`` hold after each
        truncation only. The momentum/Adam state follows (the K-state, not updated
        during the Galerkin steps, is moved at the truncation from the core at
        which it was last expressed); the cycle's position is saved with the
        layer's state, so :meth:`state_dict` mid-cycle resumes exactly. Cycles are
        per layer (a layer without a gradient in a step does not advance); layers
        that get a gradient in every step truncate together, as a ``budget``
        needs. Ignored by ``method='vanilla'`` (no bases to update).

    Raises
    ------
    ValueError
        If both ``tol`` and ``budget`` are given; ``budget`` is neither a positive
        int nor a callable, or is smaller than the parameter count of the Tucker
        layers at their ``min_rank``; ``budget_criterion`` or ``method`` is unknown;
        ``lr`` is not a finite number ``> 0``; ``betas`` are not two numbers in
        ``[0, 1)`` or ``eps`` is not finite and ``> 0``; ``rule`` is not
        registered, its ``init`` refuses its hyper-parameters, it is given with
        ``adam`` or ``momentum``, or it has no ordinary update
        (:func:`register_ordinary_rule`) and a group has ordinary parameters;
        ``tol`` is not finite,
        outside ``[0, 1)``
        with ``relative=True`` or negative; ``momentum`` lies outside ``[0, 1)``;
        ``nesterov`` is set without momentum; ``weight_decay`` is negative;
        ``basis_update_every`` is not an int ``>= 1``; ``distributed=True`` has no
        initialized process group; ``params`` is a module holding a
        ``DistributedDataParallel`` that reduces Tucker parameters (built without
        :func:`~tuckerflow.nn.prepare_ddp`); or a parameter group is
        refused (:meth:`add_param_group`). :meth:`step` raises too.
    TypeError
        If ``tol`` is not a real number, or ``rule`` is no rule spec or has
        keywords its ``init`` does not take.

    Warns
    -----
    RuntimeWarning
        From :meth:`step`: when a non-finite loss or gradient skips a step, and when
        factors written by something else are re-orthonormalized.

    References
    ----------
    .. [1] E. Zangrando, S. Schotthöfer, G. Ceruti, J. Kusch, F. Tudisco,
       "Geometry-aware training of factorized layers in tensor Tucker format",
       NeurIPS 2024.
    .. [2] G. Ceruti, J. Kusch, C. Lubich, "A parallel rank-adaptive integrator for
       dynamical low-rank approximation", SIAM J. Sci. Comput. 46(3), 2024.
    .. [3] G. Ceruti, C. Lubich, "An unconventional robust integrator for dynamical
       low-rank approximation", BIT Numer. Math. 62, 23-44, 2022.
    .. [4] B. T. Polyak, "Some methods of speeding up the convergence of iteration
       methods", USSR Comput. Math. Math. Phys. 4(5), 1-17, 1964.
    .. [5] I. Sutskever, J. Martens, G. Dahl, G. Hinton, "On the importance of
       initialization and momentum in deep learning", ICML 2013.
    .. [6] D. P. Kingma, J. Ba, "Adam: A method for stochastic optimization",
       ICLR 2015.
    .. [7] S. Schotthöfer, H. L. Yang, S. Schnake, "Dynamical low-rank compression
       of neural networks with robustness under adversarial attacks",
       arXiv:2505.08022, 2025; code: https://github.com/ScSteffen/RobustDLRT.
    .. [8] S. Schotthöfer, E. Zangrando, G. Ceruti, F. Tudisco, J. Kusch, "GeoLoRA:
       Geometric integration for parameter efficient fine-tuning", ICLR 2025.

    Examples
    --------
    >>> import torch
    >>> from tuckerflow.nn import TuckerLinear, TDLRT
    >>> layer = TuckerLinear(20, 10, rank=4)
    >>> optimizer = TDLRT(layer.parameters(), lr=0.1, tol=0.05)
    >>> loss = layer(torch.randn(8, 20)).pow(2).sum()
    >>> loss.backward()
    >>> _ = optimizer.step()
    """

    def __init__(
        self,
        params: Iterable[Any] | nn.Module,
        lr: float,
        *,
        tol: float | None = None,
        budget: int | None = None,
        budget_criterion: str = "tolerance",
        relative: bool = True,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        adam: bool = False,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        rule: Any = None,
        method: str = "auto",
        rcond: float | None = None,
        distributed: bool | None = None,
        basis_update_every: int = 1,
    ) -> None:
        # parameter id -> its Tucker layer, and the layers' names for messages
        self._owners: dict[int, TuckerLayer] = {}
        self._names: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        # factor id -> (version, data pointer) after this optimizer last wrote it
        self._written: dict[int, tuple[int, int]] = {}
        root = params if isinstance(params, nn.Module) else None
        if root is not None:
            for name, module in root.named_modules():
                if isinstance(module, TuckerLayer):
                    self._names[module] = name or type(module).__name__
            _refuse_unprepared_ddp(root)
            params = root.parameters()
        if tol is not None and budget is not None:
            raise ValueError(
                "give tol (per-layer accuracy) or budget (global size), not both"
            )
        if (
            budget is not None
            and not callable(budget)
            and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1)
        ):
            raise ValueError(
                "budget must be a positive int or a schedule step -> int, "
                f"got {budget!r}"
            )
        if budget_criterion not in GLOBAL_CRITERIA:
            raise ValueError(
                f"budget_criterion must be one of {GLOBAL_CRITERIA}, "
                f"got {budget_criterion!r}"
            )
        self.budget = budget
        self.budget_criterion = budget_criterion
        self._steps_taken = 0
        tol = 0.1 if tol is None else tol
        if not (
            isinstance(lr, (int, float))
            and not isinstance(lr, bool)
            and math.isfinite(lr)
            and lr > 0
        ):
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
        betas = tuple(betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(
                f"betas must be two numbers in [0, 1) (Adam's decay rates of the "
                f"first and second moments), got {betas!r}"
            )
        if not (math.isfinite(eps) and eps > 0):
            raise ValueError(
                f"eps must be finite and > 0 (Adam's denominator guard), got {eps!r}"
            )
        check_tol(tol, relative)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        if nesterov and momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        _check_basis_update_every(basis_update_every)
        rule = _rule_spec(rule)
        if rule is not None:
            _check_rule(*rule)
        defaults = dict(
            lr=lr,
            tol=tol,
            relative=relative,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            adam=adam,
            betas=tuple(betas),
            eps=eps,
            rule=rule,
            method=method,
            rcond=rcond,
            basis_update_every=basis_update_every,
        )
        super().__init__(params, defaults)
        self._warned_no_gradient = False
        if not any(
            id(p) in self._owners for g in self.param_groups for p in g["params"]
        ):
            warnings.warn(
                "TDLRT: none of the parameters belongs to a Tucker layer, so every "
                "parameter takes plain SGD/Adam steps. Convert the model first "
                "(tuckerize, add_tucker_adapters) and build the optimizer after it: "
                "conversion installs new Parameter objects",
                UserWarning,
                stacklevel=2,
            )
        if budget is not None:
            self._check_budget()
        self._distributed = (
            _distributed_default() if distributed is None else distributed
        )
        if self._distributed:
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized()):
                raise ValueError("distributed=True needs an initialized process group")
            self._rank, self._world_size = dist.get_rank(), dist.get_world_size()
            self._sync_initial_weights()
            if root is not None:
                # a DistributedDataParallel built on root later (accelerate, the
                # Hugging Face Trainer) leaves the Tucker parameters to this optimizer
                prepare_ddp(root)

    def _check_budget(self) -> None:
        layers = self._all_tucker_layers()
        smallest = sum(
            parameter_count(layer.weight_shape, layer.min_rank) for layer in layers
        )
        budget = self._budget_now()
        if budget < smallest:
            raise ValueError(
                f"budget={budget} is smaller than {smallest}, the parameter count "
                "of the Tucker layers at their min_rank"
            )

    def _budget_now(self) -> int:
        if callable(self.budget):
            value = self.budget(self._steps_taken)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"the budget schedule returned {value!r}, not an int > 0"
                )
            return value
        return self.budget

    # --------------------------------------------------------------- set-up
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group, as ``torch.optim.Optimizer.add_param_group``.

        The group's Tucker layers are found by their parameters and prepared for
        the group's method: with a dense-gradient step (``'tdlrt'``, or
        ``'parallel'`` on a dense layer) the layer's ``weight_delta`` is created and
        added to the group.

        Parameters
        ----------
        param_group : dict
            ``"params"`` and any of the per-group options of :class:`TDLRT`
            (``lr``, ``tol``, ``relative``, ``momentum``, ``nesterov``,
            ``weight_decay``, ``adam``, ``betas``, ``eps``, ``rule``, ``method``,
            ``rcond``, ``basis_update_every``); missing ones take the constructor's
            values (a group that replaces a default ``rule`` by ``momentum`` or
            ``adam`` sets ``rule=None``).

        Raises
        ------
        ValueError
            If ``tol``, ``method``, ``basis_update_every`` or ``rule`` is invalid
            (``rule`` unregistered, refused by its ``init``, given together with
            ``adam`` or ``momentum``, or without an ordinary update while the group
            has ordinary parameters), a Tucker layer's core and factors are not
            all in this group, its ``weight_delta`` is in another group,
            ``method='tdlrt'`` meets a factorized layer, or (torch) a parameter is
            already in another group.
        TypeError
            If ``tol`` is not a real number, ``rule`` is no rule spec or has
            keywords its ``init`` does not take, or (torch) ``params`` is a set or
            a single tensor.
        """
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group["rule"] is not None:
            group["rule"] = _rule_spec(group["rule"])
            if group["rule"] != self.defaults["rule"]:
                _check_rule(*group["rule"])
            if group["adam"] or group["momentum"]:
                raise ValueError(
                    "give the optimizer rule by rule= or by the shorthands adam= / "
                    "momentum=, not both (a group overriding a default rule with "
                    "momentum or adam sets rule=None)"
                )
        check_tol(group["tol"], group["relative"])
        _check_basis_update_every(group["basis_update_every"])
        if group["method"] not in METHODS:
            raise ValueError(
                f"method must be one of {METHODS}, got {group['method']!r}"
            )
        table = layers_by_parameter()
        members = {id(p) for p in group["params"]}
        elsewhere = {id(p) for g in self.param_groups[:-1] for p in g["params"]}
        layers = []
        for parameter in group["params"]:
            layer = table.get(id(parameter))
            if layer is not None and all(layer is not seen for seen in layers):
                layers.append(layer)
        for layer in layers:
            missing = [p for p in (layer.core, *layer.factors) if id(p) not in members]
            if missing:
                raise ValueError(
                    f"{type(layer).__name__}: its core and all factors must be in the "
                    "same parameter group (the TDLRT step updates them together)"
                )
            method = self._method(group, layer)
            if method == "tdlrt" and layer.implementation != "dense":
                raise ValueError(
                    f"method='tdlrt' needs the dense weight gradient, but a "
                    f"{type(layer).__name__} runs implementation='factorized': use "
                    "method='parallel' (or 'auto'), or implementation='dense'"
                )
            if method in ("tdlrt", "parallel") and layer.implementation == "dense":
                layer.gradient_source = "weight"  # creates layer.weight_delta
                self._add_weight_delta(group, layer, members, elsewhere)
            else:
                layer.gradient_source = "factors"
            if method != "vanilla":  # its ranks change: DDP must not reduce it
                layer._tdlrt_owned = True
            for parameter in layer.tucker_parameters():
                self._owners[id(parameter)] = layer
        self._check_ordinary_rule(group, layers)

    def _check_ordinary_rule(self, group: dict[str, Any], layers: list) -> None:
        """Refuse a group with ordinary parameters whose rule has no ordinary
        update (:func:`register_ordinary_rule`)."""
        rule = self._rule(group)
        if rule is None or rule[0] in _ORDINARY_RULES:
            return
        manifold = set()
        for layer in layers:
            if self._method(group, layer) != "vanilla":
                manifold.update(id(p) for p in layer.tucker_parameters())
                if layer.weight_delta is not None:
                    manifold.add(id(layer.weight_delta))
        ordinary = [
            p for p in group["params"] if p.requires_grad and id(p) not in manifold
        ]
        if ordinary:
            raise ValueError(_no_ordinary_rule(rule[0], len(ordinary)))

    def _add_weight_delta(
        self, group: dict[str, Any], layer: TuckerLayer, members, elsewhere
    ) -> None:
        """Put ``layer.weight_delta`` into ``group`` (where GradScaler and
        ``zero_grad`` see it) unless it is there already."""
        delta = layer.weight_delta
        if id(delta) in elsewhere:
            raise ValueError(
                f"{type(layer).__name__}: its weight_delta is in another parameter "
                "group than its core; give all of a Tucker layer's parameters to one "
                "group"
            )
        if id(delta) in members:
            return
        group["params"].append(delta)
        members.add(id(delta))
        names = group.get("param_names")
        if names is not None:  # named parameters: name it after the core
            core_name = names[[id(p) for p in group["params"]].index(id(layer.core))]
            names.append(core_name.rpartition("core")[0] + "weight_delta")

    @staticmethod
    def _method(group: dict[str, Any], layer: TuckerLayer | None) -> str:
        method = group["method"]
        if method == "auto" and layer is not None:
            return "tdlrt" if layer.implementation == "dense" else "parallel"
        return method

    def _tucker_layers(self, group: dict[str, Any]) -> list[TuckerLayer]:
        layers, seen = [], set()
        for parameter in group["params"]:
            layer = self._owners.get(id(parameter))
            if layer is not None and id(layer) not in seen:
                seen.add(id(layer))
                layers.append(layer)
        members = None
        for layer in layers:
            if members is None:
                members = {id(p) for p in group["params"]}
            if any(id(p) not in members for p in (layer.core, *layer.factors)):
                raise RuntimeError(
                    f"TDLRT: {self._describe(layer)} no longer holds the Parameter "
                    "objects this optimizer was given (something installed new ones "
                    "after the optimizer was created, e.g. "
                    "load_state_dict(..., assign=True) or module.to() with "
                    "torch.__future__.set_overwrite_module_params_on_conversion): "
                    "create the optimizer after loading or converting the model"
                )
        return layers

    def _describe(self, layer: TuckerLayer) -> str:
        name = self._names.get(layer)
        where = f"layer {name!r} " if name else "a "
        return (
            f"{where}({type(layer).__name__}, weight shape {layer.weight_shape}, "
            f"rank {layer.rank})"
        )

    @contextlib.contextmanager
    def _without_weight_deltas(self):
        """Hide every ``weight_delta`` from the groups: they hold no state, and
        checkpoints keep the layout of the ordinary and Tucker parameters."""
        deltas = {
            id(layer.weight_delta)
            for layer in self._owners.values()
            if layer.weight_delta is not None
        }
        saved = []
        for group in self.param_groups:
            keep = [i for i, p in enumerate(group["params"]) if id(p) not in deltas]
            saved.append((group["params"], group.get("param_names")))
            group["params"] = [group["params"][i] for i in keep]
            if group.get("param_names") is not None:
                group["param_names"] = [group["param_names"][i] for i in keep]
        try:
            yield
        finally:
            # by position: load_state_dict replaces the group dicts
            for group, (params, names) in zip(self.param_groups, saved):
                group["params"] = params
                if names is not None:
                    group["param_names"] = names

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state, as ``torch.optim.Optimizer.state_dict``.

        The ``weight_delta`` gradient carriers (no state) are left out, so the
        layout is that of the ordinary and Tucker parameters; a Tucker layer's
        momentum or Adam state is stored with its core (``"tucker_state"``).

        Returns
        -------
        dict
            ``"state"``, ``"param_groups"`` and ``"tdlrt_steps"``, the number of
            steps taken (the argument of a budget schedule).
        """
        with self._without_weight_deltas():
            state = super().state_dict()
        state["tdlrt_steps"] = self._steps_taken  # for budget schedules
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (one without ``"tdlrt_steps"`` restarts the
        step count at 0).

        Parameters
        ----------
        state_dict : dict
            As returned by :meth:`state_dict`; not modified. The Tucker layers must
            already have the ranks the state was saved at (load the model first,
            e.g. with :func:`~tuckerflow.nn.load_checkpoint`).
        """
        state_dict = dict(state_dict)
        self._steps_taken = int(state_dict.pop("tdlrt_steps", 0))
        # torch.optim casts every floating-point tensor of the state to its
        # parameter's dtype, and every iterable element by element: a bfloat16
        # layer's float32 TDLRT state would be rounded to bfloat16 and a packed
        # state's rule name (a str) turned into garbage. The Tucker entries are set
        # aside and restored on the parameter's device in their own dtypes.
        aside, state = {}, {}
        for index, entry in state_dict.get("state", {}).items():
            if isinstance(entry, dict) and any(k in entry for k in _TUCKER_KEYS):
                aside[index] = {k: entry[k] for k in _TUCKER_KEYS if k in entry}
                entry = {k: v for k, v in entry.items() if k not in _TUCKER_KEYS}
            state[index] = entry
        if aside:
            state_dict["state"] = state
        with self._without_weight_deltas():
            super().load_state_dict(state_dict)
            saved = [i for g in state_dict["param_groups"] for i in g["params"]]
            current = [p for g in self.param_groups for p in g["params"]]
            for index, parameter in zip(saved, current):
                if index in aside:
                    self.state[parameter].update(
                        _on_device(aside[index], parameter.device)
                    )

    # ----------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter; returns the closure's loss if given.

        The algorithm is in the class docstring. A non-finite loss or gradient skips
        the whole step (weights and optimizer state untouched) with a warning.
        Factors that something else wrote since the last step are checked first and
        re-orthonormalized if needed (see the module docstring). Runs without
        autograd and outside ``torch.autocast``.

        Parameters
        ----------
        closure : callable, optional
            Re-evaluates the model and returns the loss (called with gradients
            enabled), as for any torch optimizer.

        Returns
        -------
        tensor or None
            The closure's loss; None without a closure.

        Raises
        ------
        RuntimeError
            If a Tucker layer no longer holds the ``Parameter`` objects the optimizer
            was given (``load_state_dict(..., assign=True)``, or ``module.to()``
            under ``torch.__future__.set_overwrite_module_params_on_conversion``):
            create the optimizer after loading or converting the model.
        ValueError
            If a Tucker layer's factors hold NaN or Inf (written by something else:
            restore the weights from a checkpoint), a budget schedule returns no
            positive int, or ``betas``/``eps`` are invalid for Adam.

        Warns
        -----
        RuntimeWarning
            When the step is skipped for a non-finite loss or gradient, and when a
            layer's factors were not orthonormal and have been repaired (the
            weight is kept; its momentum/Adam state is reset, and a factorized
            layer whose gradients belong to the old factors skips this step).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # called inside an autocast region (the forward's): the step still computes
        # in the parameters' dtype
        with contextlib.ExitStack() as stack:
            for device_type in self._device_types():
                stack.enter_context(autocast_off(device_type))
            self._step(loss)
        return loss

    def _device_types(self) -> set[str]:
        return {p.device.type for g in self.param_groups for p in g["params"]}

    def _step(self, loss: Any) -> None:
        """The update, reading the device once (issue 14).

        The Tucker layers are augmented first; then the gradient and loss sums (the
        non-finite check) and every singular value and core norm the rank rules
        read travel to the host in one transfer (:func:`decompose_multi`). A
        non-finite value skips the step there, before anything is written: the
        augmentation is pure (new tensors, the stored state untouched) and is
        dropped. Otherwise the ranks are decided on the host, the truncation and
        the state transport run batched on the device with those ints, and the
        ordinary parameters take their update.
        """
        stale = self._check_factors()
        plans = self._collect(stale)
        if not stale and not any(layers or ordinary for _, layers, ordinary in plans):
            self._warn_no_gradient()
        if self._distributed:
            self._average_tucker_gradients(plans)
        sums, names = self._finiteness_sums(loss, plans)
        pending, cycle_writes = [], []
        for group, layers, _ in plans:
            augmented, writes = self._basis_cycle(group, layers)
            pending += augmented
            cycle_writes += writes
        bounds = [
            {"min_rank": layer.min_rank, "max_rank": layer.max_rank}
            for _, layer, _ in pending
        ]
        extra, valid = [], None
        if sums is not None:
            extra, valid = [sums], torch.isfinite(sums).all()
        with phase("truncation"), tf.use_backend("pytorch"):
            # every SVD of the augmented cores, batched over layers of one shape
            # (of zeros if something is not finite: the step is dropped below);
            # the one transfer: their spectra and norms with the sums
            host = decompose_multi(
                [a for _, _, a in pending], bounds, extra, valid=valid
            )
        problem = self._problem(host, names)
        if self._distributed:
            problem = self._agree_on_skipping(problem)
        if problem is not None:
            warnings.warn(
                f"TDLRT: {problem}; the step was skipped and weights and optimizer "
                "state are unchanged",
                RuntimeWarning,
                stacklevel=5,  # the caller of step() (past no_grad and the hooks)
            )
            return
        for group, _, ordinary in plans:
            self._ordinary_update(group, ordinary)
        self._apply_cycle_writes(cycle_writes)  # basis_update_every > 1
        if pending:
            with phase("truncation"):
                ranks = self._decide_ranks(pending)
                with tf.use_backend("pytorch"):
                    results = truncate_multi(
                        [augmented for _, _, augmented in pending], ranks, bounds
                    )
                for (_, layer, augmented), result in zip(pending, results):
                    self._finish(layer, augmented, result)
            if self._distributed:
                self._broadcast_tucker_layers([layer for _, layer, _ in pending])
            for _, layer, _ in pending:
                self._record_factors(layer)
        self._steps_taken += 1

    def _warn_no_gradient(self) -> None:
        """Once per optimizer: a step in which no parameter had a gradient."""
        if self._warned_no_gradient:
            return
        self._warned_no_gradient = True
        warnings.warn(
            "TDLRT.step: none of the optimizer's parameters has a gradient, so "
            "nothing was updated. If the model was converted (tuckerize, "
            "add_tucker_adapters) after the optimizer was built, the optimizer holds "
            "the replaced parameters: build it after converting",
            UserWarning,
            stacklevel=6,  # the caller of step() (past no_grad and the hooks)
        )

    def _record_factors(self, layer: TuckerLayer) -> None:
        for factor in layer.factors:
            self._written[id(factor)] = (factor._version, factor.data_ptr())

    def _check_factors(self) -> set[int]:
        """Check the factors written by someone else since this optimizer's last step
        (all of them at the first step); repair those that are not orthonormal.

        Returns the ids of repaired layers whose gradients are core and factor
        gradients: they belong to the old factors, so those layers skip this step.
        """
        stale = set()
        for group in self.param_groups:
            for layer in self._tucker_layers(group):
                if self._method(group, layer) == "vanilla":
                    continue
                if all(
                    self._written.get(id(f)) == (f._version, f.data_ptr())
                    for f in layer.factors
                ):
                    continue
                errors = layer.orthonormality_error()
                limits = [_orthonormality_tolerances(f) for f in layer.factors]
                if all(e <= repair for e, (repair, _) in zip(errors, limits)):
                    self._record_factors(layer)  # (a nan fails the test above)
                    continue
                if not all(math.isfinite(error) for error in errors):
                    raise ValueError(
                        f"TDLRT: {self._describe(layer)} has non-finite factors "
                        "(written by something other than this optimizer); restore "
                        "the weights from a checkpoint"
                    )
                ratios = [e / warn for e, (_, warn) in zip(errors, limits)]
                mode = max(range(len(errors)), key=lambda m: ratios[m])
                if ratios[mode] <= 1:  # rounding of a coarser format: repair quietly
                    gradients = [p.grad for p in (layer.core, *layer.factors)]
                    layer.orthonormalize()
                    for parameter, grad in zip((layer.core, *layer.factors), gradients):
                        parameter.grad = grad  # off by rounding only: still valid
                    self._record_factors(layer)
                    continue
                gradients_lost = (
                    layer.gradient_source == "factors" and layer.core.grad is not None
                )
                layer.orthonormalize()  # clears the core and factor gradients
                self._record_factors(layer)
                dropped = self.state[layer.core].pop("tucker_state", None)
                message = (
                    f"TDLRT: the factors of {self._describe(layer)} are not "
                    f"orthonormal (max |U^T U - I| = {errors[mode]:.3g} in mode "
                    f"{mode}, more than {limits[mode][1]:.3g} = 10 n eps): something "
                    "other than TDLRT wrote them (another optimizer, copy_, "
                    "load_state_dict). Re-orthonormalized by QR with the triangular "
                    "factors folded into the core; the weight is unchanged"
                )
                if dropped is not None:
                    message += "; the layer's momentum/Adam state was reset"
                if gradients_lost:
                    stale.add(id(layer))
                    message += (
                        "; its core and factor gradients belong to the old factors, "
                        "so the layer is not updated in this step"
                    )
                warnings.warn(message, RuntimeWarning, stacklevel=6)
        return stale

    def _collect(self, stale: set[int] = frozenset()):
        """Per group: (group, [(layer, gradients)], [ordinary params with grads])."""
        plans = []
        for group in self.param_groups:
            layers, tucker_ids = [], set()
            for layer in self._tucker_layers(group):
                if layer.weight_delta is not None:  # never an ordinary parameter
                    tucker_ids.add(id(layer.weight_delta))
                method = self._method(group, layer)
                if method == "vanilla":
                    continue  # its core and factors are updated as ordinary ones
                tucker_ids.update(id(p) for p in layer.tucker_parameters())
                if id(layer) in stale:
                    continue
                if layer.gradient_source == "weight":
                    gradient = layer.weight_gradient()
                    if gradient is not None:
                        layers.append((layer, {"weight": gradient}))
                elif layer.core.grad is not None:
                    factor_grads = [
                        f.grad if f.grad is not None else torch.zeros_like(f)
                        for f in layer.factors
                    ]
                    layers.append(
                        (layer, {"core": layer.core.grad, "factors": factor_grads})
                    )
            ordinary = [
                p
                for p in group["params"]
                if id(p) not in tucker_ids and p.grad is not None
            ]
            plans.append((group, layers, ordinary))
        return plans

    @staticmethod
    def _finiteness_sums(loss: Any, plans) -> tuple[torch.Tensor | None, list[str]]:
        """The sums of the loss and of every gradient (non-finite iff one of their
        entries is), on the device, and what each one is, for the message."""
        sums, names = [], []
        if isinstance(loss, torch.Tensor):
            sums.append(loss.detach().sum())
            names.append("the loss")
        for _, layers, ordinary in plans:
            for layer, gradients in layers:
                tensors = [gradients.get("weight"), gradients.get("core")]
                tensors += gradients.get("factors", [])
                for tensor in tensors:
                    if tensor is not None:
                        sums.append(tensor.sum())
                        names.append(f"a {type(layer).__name__} gradient")
            for parameter in ordinary:
                sums.append(parameter.grad.sum())
                names.append(
                    f"the gradient of a parameter of shape {tuple(parameter.shape)}"
                )
        if not sums:
            return None, names
        return torch.stack([s.to(torch.float64) for s in sums]), names

    @staticmethod
    def _problem(host, names: list[str]) -> str | None:
        """Why the step must be skipped, from the host copy of the sums; None if
        everything is finite."""
        if not host:
            return None
        sums = host[0]
        for value, name in zip(sums, names):
            if not math.isfinite(value):
                if name == "the loss":
                    return f"the loss is {value}"
                return f"{name} is not finite"
        return None

    def _ordinary_update(self, group: dict[str, Any], parameters: list) -> None:
        """The group's rule on all its ordinary parameters at once: plain SGD, or the
        rule's ordinary counterpart (:func:`register_ordinary_rule`; momentum and
        Adam: ``torch.optim``'s functional ``sgd``/``adam`` with ``foreach=True``,
        its multi-tensor path, on state under ``torch.optim``'s keys,
        ``momentum_buffer``; ``step``, ``exp_avg``, ``exp_avg_sq``, so the iterates
        are those of ``torch.optim.SGD``/``Adam(foreach=True)``)."""
        if not parameters:
            return
        grads = [parameter.grad for parameter in parameters]
        rule = self._rule(group)
        if rule is not None:
            name, hyper = rule
            step = _ORDINARY_RULES.get(name)
            if step is None:
                raise ValueError(_no_ordinary_rule(name, len(parameters)))
            step(
                parameters,
                grads,
                [self.state[parameter] for parameter in parameters],
                lr=group["lr"],
                weight_decay=group["weight_decay"],
                **_rule_arguments(name, hyper),
            )
            return
        # plain SGD (no empty state entries, as torch.optim.SGD)
        functional_sgd(
            parameters,
            grads,
            [None] * len(parameters),
            has_sparse_grad=any(grad.is_sparse for grad in grads),  # (embeddings)
            foreach=True,
            weight_decay=group["weight_decay"],
            momentum=0.0,
            lr=group["lr"],
            dampening=0.0,
            nesterov=False,
            maximize=False,
        )

    @staticmethod
    def _rule(group: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """The group's optimizer rule ``(name, hyper)``, None for plain SGD: its
        ``rule``, else the shorthands (``adam``, ``momentum``; a group saved before
        ``rule`` existed has only those)."""
        rule = group.get("rule")
        if rule is not None:
            return rule[0], rule[1]
        if group["adam"]:
            return "adam", {"betas": tuple(group["betas"]), "eps": group["eps"]}
        if group["momentum"]:
            return "momentum", {
                "beta": group["momentum"],
                "nesterov": group["nesterov"],
            }
        return None

    def _core_state(self, group: dict[str, Any], layer: TuckerLayer, tucker: Any):
        packed = self.state[layer.core].get("tucker_state")
        if packed is not None:
            return _unpack(packed)
        rule = self._rule(group)
        if rule is None:
            return None
        name, hyper = rule
        return rule_class(name).init(tucker, **hyper)

    def _augment_group(self, group, layers) -> list[tuple[Any, TuckerLayer, Any]]:
        """Steps 1-5 for every layer of a group, in layer order.

        Layers with a dense weight gradient go through the multi-tensor path
        (:mod:`tuckerflow.integrators.multi`: one batched QR per group of equal
        shapes instead of one per layer and mode; the same iterates as the
        per-layer functions); layers with core and factor gradients are augmented
        one by one.
        """
        steps: list[Any] = [None] * len(layers)
        batched: dict[str, list[tuple[int, Any, Any, Any]]] = {}
        for index, (layer, gradients) in enumerate(layers):
            if "weight" not in gradients:
                steps[index] = self._augment_from_factor_gradients(
                    group, layer, gradients
                )
                continue
            tucker, gradients, state = self._prepare(group, layer, gradients)
            grad = gradients["weight"]
            if group["weight_decay"]:
                grad = grad + group["weight_decay"] * reconstruct(
                    tucker.core, tucker.factors
                )
            method = self._method(group, layer)
            batched.setdefault(method, []).append((index, tucker, grad, state))
        for method, items in batched.items():
            augment = (
                tdlrt_augment_multi if method == "tdlrt" else parallel_augment_multi
            )
            states = [state for *_, state in items]
            with tf.use_backend("pytorch"):
                results = augment(
                    [tucker.core for _, tucker, _, _ in items],
                    [tucker.factors for _, tucker, _, _ in items],
                    [grad for _, _, grad, _ in items],
                    group["lr"],
                    None if states[0] is None else states,
                )
            for (index, *_), augmented in zip(items, results):
                steps[index] = augmented
        return [
            (group, layer, augmented) for (layer, _), augmented in zip(layers, steps)
        ]

    # ------------------------------------------------ basis_update_every = k
    def _basis_cycle(self, group, layers):
        """The layers of a group under ``basis_update_every = k``: returns those to
        truncate in this step, as :meth:`_augment_group` does (which it is, for
        ``k = 1`` with no cycle in progress), and the writes of the others, applied
        by :meth:`_apply_cycle_writes` once the step is known to be finite.

        A layer's position in its cycle of ``k`` steps is kept with its core's
        optimizer state (``"basis_cycle"``, present from the end of the cycle's first
        step until the truncation), so a ``state_dict`` taken mid-cycle resumes it.
        First step: steps 1-4 of the class docstring, then with ``k > 1`` the layer
        takes the augmented point untruncated (:meth:`_hold_augmented`). Later steps:
        a Galerkin step of the core in the fixed bases
        (:meth:`_galerkin_core_step`); the ``k``-th is truncated with the others.
        Nothing is written here: a skipped step leaves the cycle as it was.
        """
        every = group["basis_update_every"]
        starting, continuing = [], []
        for layer, gradients in layers:
            in_cycle = "basis_cycle" in self.state.get(layer.core, {})
            (continuing if in_cycle else starting).append((layer, gradients))
        if every == 1 and not continuing:
            return self._augment_group(group, layers), []
        now: dict[int, tuple[Any, TuckerLayer, Any]] = {}
        writes = []
        for entry in self._augment_group(group, starting) if starting else []:
            _, layer, augmented = entry
            if every == 1:
                now[id(layer)] = entry
            else:
                writes.append(
                    (layer, functools.partial(self._hold_augmented, layer, augmented))
                )
        for layer, gradients in continuing:
            augmented, write = self._galerkin_core_step(group, layer, gradients, every)
            if augmented is None:
                writes.append((layer, write))
            else:  # truncated with the others; the write only ends the cycle
                writes.append((None, write))
                now[id(layer)] = (group, layer, augmented)
        pending = [now[id(layer)] for layer, _ in layers if id(layer) in now]
        return pending, writes

    def _apply_cycle_writes(self, writes) -> None:
        """Apply the held augmented points and mid-cycle Galerkin steps of
        :meth:`_basis_cycle` (after the non-finite check)."""
        for _, write in writes:
            write()
        written = [layer for layer, _ in writes if layer is not None]
        if self._distributed and written:
            self._broadcast_tucker_layers(written)
            self._broadcast_cycle_anchors(written)
        for layer in written:
            self._record_factors(layer)

    def _hold_augmented(self, layer: TuckerLayer, augmented: AugmentedStep) -> None:
        """First step of a cycle: the layer takes the augmented core ``Ĉ`` in the
        bases ``Û_i`` untruncated (ranks up to ``2 r_i``, above ``max_rank`` for
        now); its momentum/Adam state moves into those coordinates. A mode whose
        augmented size exceeds what the core's (or the weight's) other modes allow
        is cut to that size, which drops nothing."""
        dims = tuple(augmented.core.shape)
        held = tuple(
            min(d, a, b)
            for d, a, b in zip(
                dims, available_ranks(dims), available_ranks(layer.weight_shape)
            )
        )
        with phase("core step"), tf.use_backend("pytorch"):
            new, state = augmented.finish(rank=held, min_rank=held, max_rank=held)
        cycle: dict[str, Any] = {"position": 1}
        if state is not None:
            self.state[layer.core]["tucker_state"] = _pack(state)
            # the K-state is now expressed at this core (its Q_i): the truncation
            # at the end of the cycle moves it from there
            cycle["anchor"] = new.core.clone()
        layer.set_tucker(new)
        self.state[layer.core]["basis_cycle"] = cycle

    def _galerkin_core_step(
        self, group, layer: TuckerLayer, gradients, every: int
    ) -> tuple[AugmentedStep | None, Callable[[], None]]:
        """A later step of a cycle: ``C <- C - h d(dL/dC)`` with the factors fixed
        (``dL/dC = G ×_i U_i^T``, or the core's own gradient for a factorized layer;
        plus ``wd C``; ``d`` the momentum/Adam direction). Returns ``(None, write)``
        with ``write()`` applying it to the layer, or, at the cycle's last step, the
        untruncated step for the truncation and the write that ends the cycle."""
        tucker, gradients, state = self._prepare(group, layer, gradients)
        core, factors = tucker.core, list(tucker.factors)
        with tf.use_backend("pytorch"):
            with phase("contractions"):
                if "weight" in gradients:
                    contractions = GradientContractions(gradients["weight"], factors)
                    core_grad = contractions.core_gradient()
                else:
                    core_grad = gradients["core"]
            with phase("core step"):
                if group["weight_decay"]:
                    core_grad = core_grad + group["weight_decay"] * core
                direction = core_grad
                if state is not None:
                    state = state.begin_step()
                    direction, state = state.core_direction(core_grad)
                new_core = core - group["lr"] * direction
        cycle = self.state[layer.core]["basis_cycle"]
        # a state created within the cycle has zero K-buffers at the present core
        anchor = cycle.get("anchor", core)
        if cycle["position"] + 1 < every:

            def write() -> None:
                cycle["position"] += 1
                if state is not None:
                    self.state[layer.core]["tucker_state"] = _pack(state)
                    cycle["anchor"] = anchor.clone() if anchor is core else anchor
                layer.set_tucker((new_core, factors))

            return None, write

        def end_cycle() -> None:  # its state is written by the truncation
            del self.state[layer.core]["basis_cycle"]

        return (
            AugmentedStep(
                new_core,
                factors,
                state,
                factors,
                None if state is None else [None] * len(factors),
                old_core=anchor,  # where the K-state was last expressed, not ``core``
            ),
            end_cycle,
        )

    def _broadcast_cycle_anchors(self, layers) -> None:
        """Worker 0's anchor cores (the K-state's coordinates) of layers mid-cycle."""
        import torch.distributed as dist

        for layer in layers:
            anchor = self.state[layer.core].get("basis_cycle", {}).get("anchor")
            if anchor is not None:
                dist.broadcast(anchor, src=0)

    def _prepare(self, group, layer: TuckerLayer, gradients):
        """The layer's point, gradients and optimizer state in its compute dtype."""
        compute = factorization_dtype(layer.core.dtype)
        tucker = layer.tucker()
        if tucker.core.dtype != compute:
            tucker = TuckerTensor(
                (tucker.core.to(compute), [f.to(compute) for f in tucker.factors])
            )
        gradients = {
            key: (
                [g.to(compute) for g in value]
                if isinstance(value, list)
                else value.to(compute)
            )
            for key, value in gradients.items()
        }
        with tf.use_backend("pytorch"):
            state = self._core_state(group, layer, tucker)
        return tucker, gradients, state

    def _augment_from_factor_gradients(
        self, group, layer: TuckerLayer, gradients
    ) -> AugmentedStep:
        """Steps 1-5 of a factorized layer's update (parallel BUG from its core and
        factor gradients), everything but the truncation.

        Computed in :func:`~tuckerflow.nn.layers.factorization_dtype` of the layer
        (float32 for float16/bfloat16 layers, whatever dtype the gradient has);
        :meth:`TuckerLayer.set_tucker` stores the result in the layer's dtype.
        """
        tucker, gradients, state = self._prepare(group, layer, gradients)
        decay = group["weight_decay"]
        core_grad, factor_grads = gradients["core"], gradients["factors"]
        with tf.use_backend("pytorch"):
            if decay:
                core_grad = core_grad + decay * tucker.core
                factor_grads = [
                    g + decay * _gram_term(tucker, mode)
                    for mode, g in enumerate(factor_grads)
                ]
            return parallel_augment_from_factor_gradients(
                tucker.core,
                tucker.factors,
                core_grad,
                factor_grads,
                group["lr"],
                rcond=group["rcond"],
                state=state,
            )

    def _decide_ranks(self, pending) -> list[tuple[int, ...]]:
        """New ranks of every pending layer: by tolerance, or by the global budget.

        In data-parallel training worker 0 decides and broadcasts, so shapes can never
        diverge even when a singular value sits on the tolerance boundary.
        """
        if self._distributed and self._rank != 0:
            ranks = None
        else:
            with tf.use_backend("pytorch"):
                ranks = self._choose_ranks(pending)
        if self._distributed:
            ranks = self._broadcast_ranks(ranks, pending)
        return ranks

    def _choose_ranks(self, pending) -> list[tuple[int, ...]]:
        if self.budget is None:
            return [
                augmented.select(
                    tol=group["tol"],
                    relative=group["relative"],
                    min_rank=layer.min_rank,
                    max_rank=layer.max_rank,
                )
                for group, layer, augmented in pending
            ]
        problems = []
        for _, layer, augmented in pending:
            # decomposed by decompose_multi: the spectra are host copies already
            decomposition = augmented.decompose(layer.min_rank, layer.max_rank)
            dims = available_ranks(tuple(augmented.core.shape))
            problems.append(
                {
                    "spectra": list(decomposition.spectra),
                    "shape": layer.weight_shape,
                    "min_rank": tuple(
                        min(lo, d) for lo, d in zip(layer.min_rank, dims)
                    ),
                    "max_rank": tuple(
                        min(hi, d) for hi, d in zip(layer.max_rank, dims)
                    ),
                    "norm": decomposition.norm,
                }
            )
        # layers without a gradient this step keep their size inside the budget
        active = {id(layer) for _, layer, _ in pending}
        fixed = sum(
            layer.parameter_count()
            for layer in self._all_tucker_layers()
            if id(layer) not in active
        )
        return ranks_from_global_budget(
            problems, self._budget_now() - fixed, criterion=self.budget_criterion
        )

    def _finish(self, layer: TuckerLayer, augmented: AugmentedStep, out) -> None:
        """Store a truncated step (:func:`truncate_multi`'s ``(tucker, state)``) in
        the layer."""
        new, state = out
        if state is not None:
            self.state[layer.core]["tucker_state"] = _pack(state)
        layer.set_tucker(new)

    def _all_tucker_layers(self) -> list[TuckerLayer]:
        layers = []
        for group in self.param_groups:
            if self._method(group, None) == "vanilla":
                continue
            layers += self._tucker_layers(group)
        return layers

    # ------------------------------------------------------ data parallelism
    def _average_tucker_gradients(self, plans) -> None:
        """Average every Tucker-layer gradient over the workers (DDP ignores these
        parameters, see :func:`tuckerflow.nn.prepare_ddp`)."""
        import torch.distributed as dist

        tensors = []
        for _, layers, _ in plans:
            for _, gradients in layers:
                tensors += [gradients.get("weight"), gradients.get("core")]
                tensors += gradients.get("factors", [])
        tensors = [t for t in tensors if t is not None]
        if not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        flat /= self._world_size
        offset = 0
        for tensor in tensors:
            tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
            offset += tensor.numel()

    def _agree_on_skipping(self, problem: str | None) -> str | None:
        import torch.distributed as dist

        flag = torch.tensor([0.0 if problem is None else 1.0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() and problem is None:
            return "another worker saw a non-finite loss or gradient"
        return problem

    def _broadcast_ranks(self, ranks, pending) -> list[tuple[int, ...]]:
        import torch.distributed as dist

        orders = [len(layer.weight_shape) for _, layer, _ in pending]
        flat = torch.zeros(sum(orders), dtype=torch.int64)
        if ranks is not None:
            flat = torch.tensor([r for rank in ranks for r in rank], dtype=torch.int64)
        dist.broadcast(flat, src=0)
        values, out = flat.tolist(), []
        for order in orders:
            out.append(tuple(values[:order]))
            values = values[order:]
        return out

    def _broadcast_tucker_layers(self, layers) -> None:
        """Make every worker hold worker 0's bits (weights and optimizer state)."""
        import torch.distributed as dist

        for layer in layers:
            tensors = [layer.core.data, *(f.data for f in layer.factors)]
            packed = self.state.get(layer.core, {}).get("tucker_state")
            if packed is not None:
                for value in packed.values():
                    if isinstance(value, torch.Tensor):
                        tensors.append(value)
                    elif isinstance(value, list):
                        tensors += [v for v in value if isinstance(v, torch.Tensor)]
            for tensor in tensors:
                dist.broadcast(tensor, src=0)

    def _sync_initial_weights(self) -> None:
        """Worker 0's ranks and weights for every Tucker layer (DDP does not sync the
        parameters it ignores)."""
        import torch.distributed as dist

        layers = self._all_tucker_layers()
        if not layers:
            return
        orders = [len(layer.weight_shape) for layer in layers]
        flat = torch.tensor(
            [r for layer in layers for r in layer.rank], dtype=torch.int64
        )
        dist.broadcast(flat, src=0)
        values = flat.tolist()
        for layer, order in zip(layers, orders):
            rank, values = tuple(values[:order]), values[order:]
            if rank != layer.rank:
                core = torch.zeros(
                    rank, dtype=layer.core.dtype, device=layer.core.device
                )
                factors = [
                    torch.zeros(n, r, dtype=f.dtype, device=f.device)
                    for n, r, f in zip(layer.weight_shape, rank, layer.factors)
                ]
                layer.set_tucker((core, factors))
        self._broadcast_tucker_layers(layers)


def _refuse_unprepared_ddp(root: nn.Module) -> None:
    """Refuse a ``DistributedDataParallel`` inside ``root`` (or ``root`` itself) that
    reduces Tucker parameters: it was built without :func:`prepare_ddp`, and its
    gradient buckets cannot follow the TDLRT step (no core and factor gradients,
    rank changes)."""
    from torch.nn.parallel import DistributedDataParallel

    for name, module in root.named_modules():
        if not isinstance(module, DistributedDataParallel):
            continue
        reduced = ddp_parameter_ids(module)
        for inner, layer in module.named_modules():
            if isinstance(layer, TuckerLayer) and any(
                id(p) in reduced for p in (layer.core, *layer.factors)
            ):
                where = ".".join(n for n in (name, inner) if n)
                raise ValueError(
                    f"TDLRT: the DistributedDataParallel {name or 'model'!r} reduces "
                    f"the core and factors of the Tucker layer {where!r}: it was "
                    "built without prepare_ddp, and DDP cannot follow the TDLRT step "
                    "(it waits for core and factor gradients the step does not "
                    "produce, and ranks change the shapes of its buckets). Wrap the "
                    "model as DistributedDataParallel(tuckerflow.nn.prepare_ddp("
                    "model)), or create the optimizer on the unwrapped model "
                    "before wrapping it (TDLRT(model, ...) then applies prepare_ddp)"
                )


def _no_ordinary_rule(name: str, count: int) -> str:
    return (
        f"the optimizer rule {name!r} has no update for ordinary parameters, and "
        f"{count} parameter(s) of this group are not Tucker weights (biases, norms, "
        "dense layers, or layers with method='vanilla'): register one with "
        f"tuckerflow.nn.register_ordinary_rule({name!r}, step), or put those "
        "parameters into a group with another rule"
    )


def _check_basis_update_every(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            "basis_update_every must be an int >= 1 (1: the TDLRT step in every "
            "step; k > 1: augment the bases every k steps, Galerkin steps of the "
            f"core in between, truncate every k-th step), got {value!r}"
        )


def _scalar_dtype() -> torch.dtype:
    """The dtype ``torch.optim`` gives its ``step`` counters."""
    default = torch.get_default_dtype()
    return torch.float64 if default == torch.float64 else torch.float32


def _gram_term(tucker: Any, mode: int) -> torch.Tensor:
    """``d/dU_i (||W||^2 / 2) = U_i C_(i) C_(i)^T``."""
    core, factors = tucker
    unfolded = torch.movedim(core, mode, 0).reshape(core.shape[mode], -1)
    return factors[mode] @ (unfolded @ unfolded.t())


def _distributed_default() -> bool:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return False
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def linear_budget(start: int, end: int, steps: int):
    """Budget schedule: from ``start`` to ``end`` parameters linearly over ``steps``
    optimizer steps, then ``end``.

    Cutting a randomly initialised network to a tight budget in its first step keeps
    directions chosen by the random initialisation; shrinking gradually lets training
    concentrate the energy first. On LeNet-5 at 95% compression (``start`` = the
    half-rank initialisation, ``end`` = 5% of the weights, ``steps`` = one epoch) see
    ``benchmarks/lenet_compression.py``.

    Parameters
    ----------
    start, end : int
        Budgets (stored Tucker weights, see :class:`TDLRT`) at step 0 and from step
        ``steps`` on; positive.
    steps : int
        Number of optimizer steps of the transition, positive.

    Returns
    -------
    callable
        ``schedule(step) -> int``: ``round(start + min(step / steps, 1) (end -
        start))``.

    Raises
    ------
    ValueError
        If ``start``, ``end`` or ``steps`` is below 1.
    """
    if steps < 1 or start < 1 or end < 1:
        raise ValueError("start, end and steps must be positive")

    def schedule(step: int) -> int:
        fraction = min(step / steps, 1.0)
        return round(start + fraction * (end - start))

    return schedule
