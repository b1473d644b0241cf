"""``TDLRT``: a ``torch.optim.Optimizer`` whose Tucker weights take the TDLRT step.

Every Tucker layer (:class:`~tuckerflow.nn.TuckerLayer`) whose parameters are in the
optimizer is updated by the core integrators under TensorLy's pytorch backend; every
other parameter (biases, BatchNorm, dense layers) takes the matching ordinary update
(SGD with momentum, or Adam). Ranks change in place: the layer's ``Parameter`` objects
are kept and their data swapped.

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
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

import tuckerflow as tf
from tuckerflow._checks import check_tol
from tuckerflow.integrators import Adam, Momentum
from tuckerflow.integrators.bug import parallel_update_from_factor_gradients
from tuckerflow.integrators.tdlrt import tdlrt_update_unchecked

from .layers import TuckerLayer, reconstruct

__all__ = ["TDLRT"]

METHODS = ("auto", "tdlrt", "parallel", "vanilla")


def _pack(state: Any) -> dict[str, Any]:
    """Core optimizer state -> plain dict of tensors and numbers (state_dict-safe)."""
    packed: dict[str, Any] = {"adam": isinstance(state, Adam)}
    for field in dataclasses.fields(state):
        value = getattr(state, field.name)
        packed[field.name] = list(value) if isinstance(value, tuple) else value
    return packed


def _unpack(packed: dict[str, Any]) -> Any:
    cls = Adam if packed["adam"] else Momentum
    values = {}
    for field in dataclasses.fields(cls):
        value = packed[field.name]
        values[field.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def _layer_of(parameter: torch.Tensor) -> TuckerLayer | None:
    reference = getattr(parameter, "_tuckerflow_layer", None)
    return None if reference is None else reference()


class TDLRT(torch.optim.Optimizer):
    """Geometry-aware, rank-adaptive optimizer for models with Tucker layers.

    Parameters
    ----------
    params : iterable of parameters or dicts, or nn.Module
        As for any torch optimizer; a module means ``module.parameters()``.
    lr : float
    tol : float, default 0.1
        Truncation tolerance of every TDLRT step (relative: the new weight is within
        ``tol * ||W||`` of the untruncated step, total over all modes).
    relative : bool, default True
    momentum : float, default 0
        Heavy-ball momentum for all parameters (Tucker: on the K and core updates,
        carried through rank changes).
    nesterov : bool
    weight_decay : float, default 0
        L2 penalty on the represented weights and ordinary parameters.
    adam : bool
        Use Adam (``betas``, ``eps``) instead of SGD(+momentum).
    method : {'auto', 'tdlrt', 'parallel', 'vanilla'}
    rcond : float, optional
        Cut-off of the factorized K-gradient solve (default ``sqrt(eps)``).

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
        tol: float = 0.1,
        relative: bool = True,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        adam: bool = False,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        method: str = "auto",
        rcond: float | None = None,
    ) -> None:
        if isinstance(params, nn.Module):
            params = params.parameters()
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be finite and > 0, got {lr!r}")
        check_tol(tol, relative)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        if nesterov and momentum == 0:
            raise ValueError("nesterov needs momentum > 0")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
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
            method=method,
            rcond=rcond,
        )
        super().__init__(params, defaults)

    # --------------------------------------------------------------- set-up
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_tol(group["tol"], group["relative"])
        if group["method"] not in METHODS:
            raise ValueError(
                f"method must be one of {METHODS}, got {group['method']!r}"
            )
        members = {id(p) for p in group["params"]}
        for parameter in group["params"]:
            layer = _layer_of(parameter)
            if layer is None:
                continue
            own = [layer.core, *layer.factors]
            missing = [p for p in own if id(p) not in members]
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
                layer.gradient_source = "weight"
            else:
                layer.gradient_source = "factors"

    @staticmethod
    def _method(group: dict[str, Any], layer: TuckerLayer) -> str:
        method = group["method"]
        if method == "auto":
            return "tdlrt" if layer.implementation == "dense" else "parallel"
        return method

    def _tucker_layers(self, group: dict[str, Any]) -> list[TuckerLayer]:
        layers, seen = [], set()
        for parameter in group["params"]:
            layer = _layer_of(parameter)
            if layer is not None and id(layer) not in seen:
                seen.add(id(layer))
                layers.append(layer)
        return layers

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none=set_to_none)
        for group in self.param_groups:
            for layer in self._tucker_layers(group):
                layer.clear_weight_gradient()

    # ----------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter; returns the closure's loss if given.

        A non-finite loss or gradient skips the whole step (weights and optimizer
        state untouched) with a warning.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        plans = self._collect()
        problem = self._non_finite(loss, plans)
        if problem is not None:
            warnings.warn(
                f"TDLRT: {problem}; the step was skipped and weights and optimizer "
                "state are unchanged",
                RuntimeWarning,
                stacklevel=2,
            )
            return loss
        for group, layers, ordinary in plans:
            for parameter in ordinary:
                self._ordinary_update(group, parameter)
            for layer, gradients in layers:
                self._tucker_update(group, layer, gradients)
        return loss

    def _collect(self):
        """Per group: (group, [(layer, gradients)], [ordinary params with grads])."""
        plans = []
        for group in self.param_groups:
            layers, tucker_ids = [], set()
            for layer in self._tucker_layers(group):
                method = self._method(group, layer)
                if method == "vanilla":
                    continue  # its parameters are updated as ordinary ones
                tucker_ids.update(id(p) for p in (layer.core, *layer.factors))
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
    def _non_finite(loss: Any, plans) -> str | None:
        if loss is not None and isinstance(loss, torch.Tensor):
            if not torch.isfinite(loss.detach()).all():
                return f"the loss is {loss.item()}"
        sums, names = [], []
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
            return None
        finite = torch.isfinite(torch.stack([s.to(torch.float64) for s in sums]))
        if bool(finite.all()):
            return None
        return f"{names[int((~finite).nonzero()[0])]} is not finite"

    def _ordinary_update(self, group: dict[str, Any], parameter: torch.Tensor) -> None:
        grad = parameter.grad
        if group["weight_decay"]:
            grad = grad.add(parameter, alpha=group["weight_decay"])
        state = self.state[parameter]
        lr = group["lr"]
        if group["adam"]:
            beta1, beta2 = group["betas"]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float64)
                state["exp_avg"] = torch.zeros_like(parameter)
                state["exp_avg_sq"] = torch.zeros_like(parameter)
            state["step"] += 1
            step = float(state["step"])
            state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denominator = (
                (state["exp_avg_sq"] / (1 - beta2**step)).sqrt_().add_(group["eps"])
            )
            parameter.addcdiv_(
                state["exp_avg"], denominator, value=-lr / (1 - beta1**step)
            )
            return
        momentum = group["momentum"]
        if momentum:
            buffer = state.get("momentum_buffer")
            if buffer is None:
                buffer = state["momentum_buffer"] = grad.clone()
            else:
                buffer.mul_(momentum).add_(grad)
            grad = grad.add(buffer, alpha=momentum) if group["nesterov"] else buffer
        parameter.add_(grad, alpha=-lr)

    def _core_state(self, group: dict[str, Any], layer: TuckerLayer, tucker: Any):
        packed = self.state[layer.core].get("tucker_state")
        if packed is not None:
            return _unpack(packed)
        if group["adam"]:
            return Adam.init(tucker, betas=group["betas"], eps=group["eps"])
        if group["momentum"]:
            return Momentum.init(tucker, group["momentum"], nesterov=group["nesterov"])
        return None

    def _tucker_update(self, group, layer: TuckerLayer, gradients) -> None:
        tucker = layer.tucker()
        rule = {
            "rank": None,
            "tol": group["tol"],
            "relative": group["relative"],
            "min_rank": layer.min_rank,
            "max_rank": layer.max_rank,
            "budget": None,
        }
        decay = group["weight_decay"]
        lr = group["lr"]
        with tf.use_backend("pytorch"):
            state = self._core_state(group, layer, tucker)
            if "weight" in gradients:
                grad = gradients["weight"]
                if decay:
                    grad = grad + decay * reconstruct(tucker.core, tucker.factors)
                if self._method(group, layer) == "tdlrt":
                    # unchecked: layer points are orthonormal by construction, the
                    # rule was validated when the group was added, the gradient's
                    # finiteness by _non_finite
                    out = tdlrt_update_unchecked(
                        tucker.core, tucker.factors, grad, lr, state=state, **rule
                    )
                else:
                    out = tf.parallel_bug_step(tucker, grad, lr, state=state, **rule)
            else:
                core_grad, factor_grads = gradients["core"], gradients["factors"]
                if decay:
                    core_grad = core_grad + decay * tucker.core
                    factor_grads = [
                        g + decay * _gram_term(tucker, mode)
                        for mode, g in enumerate(factor_grads)
                    ]
                out = parallel_update_from_factor_gradients(
                    tucker.core,
                    tucker.factors,
                    core_grad,
                    factor_grads,
                    lr,
                    rcond=group["rcond"],
                    state=state,
                    **rule,
                )
        if state is not None:
            new, state = out
            self.state[layer.core]["tucker_state"] = _pack(state)
        else:
            new = out
        layer.set_tucker(new)


def _gram_term(tucker: Any, mode: int) -> torch.Tensor:
    """``d/dU_i (||W||^2 / 2) = U_i C_(i) C_(i)^T``."""
    core, factors = tucker
    unfolded = torch.movedim(core, mode, 0).reshape(core.shape[mode], -1)
    return factors[mode] @ (unfolded @ unfolded.t())
