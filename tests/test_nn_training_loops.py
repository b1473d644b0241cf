"""TDLRT inside the training loops people write (issue 13), against the ground truth.

The control is the dense layer (``nn.Linear``/``nn.Conv2d``) trained by
``torch.optim.SGD``. A Tucker layer at full rank with its ranks pinned
(``min_rank == max_rank == full``) takes exactly the dense SGD step under TDLRT (the
augmented bases span everything and the Galerkin core step is ``W - lr G``), so every
loop below must give the control's weights: to ~1e-12 relative in float64, and in
float32 to a tolerance derived from the float32 rounding of the steps.
"""

from __future__ import annotations

import copy
import io
import math
import pickle
import warnings

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from tuckerflow.nn import (  # noqa: E402
    TDLRT,
    TuckerConv1d,
    TuckerConv2d,
    TuckerLinear,
    add_tucker_adapters,
    prepare_ddp,
    tuckerize,
)
from tuckerflow.nn.layers import reconstruct  # noqa: E402

D = torch.float64
LR = 0.1


def _pinned(dense):
    """Full-rank Tucker copy of ``dense`` whose ranks cannot change."""
    full = tuple(dense.weight.shape)
    cls = TuckerLinear if isinstance(dense, nn.Linear) else TuckerConv2d
    return cls.from_dense(dense, rank=full, min_rank=full, max_rank=full)


def _pair(kind, dtype=D, seed=0):
    torch.manual_seed(seed)
    if kind == "linear":
        dense = nn.Linear(8, 6, dtype=dtype)
    else:
        dense = nn.Conv2d(3, 4, 3, padding=1, dtype=dtype)
    return dense, _pinned(dense)


def _batch(kind, step, dtype=D):
    generator = torch.Generator().manual_seed(1000 + step)
    if kind == "linear":
        x = torch.randn(16, 8, generator=generator, dtype=dtype)
        y = torch.randn(16, 6, generator=generator, dtype=dtype)
    else:
        x = torch.randn(4, 3, 5, 5, generator=generator, dtype=dtype)
        y = torch.randn(4, 4, 5, 5, generator=generator, dtype=dtype)
    return x, y


def _tolerance(dtype, steps=1):
    """float64: 1e-12 relative. float32: the rebuilt weight and a full-rank TDLRT step
    (QR, SVD and contractions over at most ~100 entries) each round at a few ulps
    times the length of their longest sum; 100 eps per step bounds that."""
    if dtype == torch.float64:
        return 1e-12
    return 100 * steps * torch.finfo(dtype).eps


def _assert_same_weight(tucker, dense, start, dtype=D, steps=1):
    """Same weight as the control, relative to how far the control moved (the
    comparison is not trivial: the move is checked to be substantial)."""
    moved = (dense.weight - start).norm()
    assert moved > 1e-3 * start.norm(), "the control should have moved"
    error = (tucker.weight.detach() - dense.weight.detach()).norm()
    assert error <= _tolerance(dtype, steps) * dense.weight.detach().norm(), (
        float(error / moved),
        float(moved),
    )
    if tucker.bias is not None:
        torch.testing.assert_close(
            tucker.bias.detach(),
            dense.bias.detach(),
            rtol=0,
            atol=_tolerance(dtype, steps) * float(dense.bias.detach().norm()),
        )


def _orthonormality(layer):
    return max(layer.orthonormality_error())


# ------------------------------------------------------------- item 1: GradScaler
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_grad_scaler_unscales_skips_and_backs_off_like_the_dense_control(kind, dtype):
    dense, tucker = _pair(kind, dtype)
    start = dense.weight.detach().clone()
    runs = [
        (dense, torch.optim.SGD(dense.parameters(), lr=LR)),
        (tucker, TDLRT(tucker.parameters(), lr=LR, tol=0.0)),
    ]
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0**10) for _ in runs]
    scales = [[], []]
    inf_step = 2
    for step in range(6):
        x, y = _batch(kind, step, dtype)
        if step == inf_step:
            x = x.clone()
            x.view(-1)[0] = float("inf")
        for index, ((model, optimizer), scaler) in enumerate(zip(runs, scalers)):
            before = model.weight.detach().clone()
            optimizer.zero_grad()
            scaler.scale(F.mse_loss(model(x), y)).backward()
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # the scaler skips, not TDLRT
                scaler.step(optimizer)
            scaler.update()
            scales[index].append(scaler.get_scale())
            if step == inf_step:
                assert torch.equal(model.weight.detach(), before)
    assert scales[0] == scales[1]
    assert scales[1][inf_step] == 2.0**9  # backed off once
    _assert_same_weight(tucker, dense, start, dtype, steps=5)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_unscale_and_clip_grad_norm_clip_what_the_step_uses(kind):
    dense, tucker = _pair(kind)
    start = dense.weight.detach().clone()
    runs = [
        (dense, torch.optim.SGD(dense.parameters(), lr=LR)),
        (tucker, TDLRT(tucker.parameters(), lr=LR, tol=0.0)),
    ]
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0**10) for _ in runs]
    clip = 0.05
    for step in range(4):
        x, y = _batch(kind, step)
        norms = []
        for (model, optimizer), scaler in zip(runs, scalers):
            optimizer.zero_grad()
            scaler.scale(F.mse_loss(model(x), y)).backward()
            scaler.unscale_(optimizer)
            norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
            scaler.step(optimizer)
            scaler.update()
        assert norms[0] > 2 * clip, "the clip should bind"
        torch.testing.assert_close(norms[1], norms[0], rtol=1e-12, atol=0)
    _assert_same_weight(tucker, dense, start)


def test_gradients_accumulate_over_several_backward_passes():
    dense, tucker = _pair("linear")
    start = dense.weight.detach().clone()
    runs = [
        (dense, torch.optim.SGD(dense.parameters(), lr=LR)),
        (tucker, TDLRT(tucker.parameters(), lr=LR, tol=0.0)),
    ]
    for step in range(3):
        for model, optimizer in runs:
            optimizer.zero_grad()
            for micro in range(3):
                x, y = _batch("linear", 10 * step + micro)
                (F.mse_loss(model(x), y) / 3).backward()
            optimizer.step()
    _assert_same_weight(tucker, dense, start)


# ------------------------------------------- item 2: model.zero_grad after NaN
def test_model_zero_grad_after_a_nan_batch_lets_later_steps_happen():
    dense, tucker = _pair("linear")
    start = dense.weight.detach().clone()
    control = torch.optim.SGD(dense.parameters(), lr=LR)
    optimizer = TDLRT(tucker.parameters(), lr=LR, tol=0.0)
    nan_step, changed = 1, 0
    for step in range(5):
        x, y = _batch("linear", step)
        if step == nan_step:
            x = x.clone()
            x[0, 0] = float("nan")
        before = tucker.weight.detach().clone()
        tucker.zero_grad()  # the nn.Module one
        F.mse_loss(tucker(x), y).backward()
        if step == nan_step:
            with pytest.warns(RuntimeWarning, match="not finite.*step was skipped"):
                optimizer.step()
            continue  # the control skips the same batch
        optimizer.step()
        changed += int(not torch.equal(before, tucker.weight.detach()))
        dense.zero_grad()
        F.mse_loss(dense(x), y).backward()
        control.step()
    assert changed == 4
    _assert_same_weight(tucker, dense, start)


# --------------------------------------------- item 4: a parent reads .weight
class _ReadsWeight(nn.Module):
    def __init__(self, proj):
        super().__init__()
        self.proj = proj

    def forward(self, x):
        return F.linear(x, self.proj.weight, self.proj.bias)


def test_a_parent_reading_weight_trains_the_layer_like_the_control():
    dense, tucker = _pair("linear")
    start = dense.weight.detach().clone()
    runs = [
        (_ReadsWeight(dense), torch.optim.SGD, {}),
        (_ReadsWeight(tucker), TDLRT, {"tol": 0.0}),
    ]
    runs = [(m, cls(m.parameters(), lr=LR, **kw)) for m, cls, kw in runs]
    for step in range(3):
        x, y = _batch("linear", step)
        for model, optimizer in runs:
            optimizer.zero_grad()
            F.mse_loss(model(x), y).backward()
            optimizer.step()
    _assert_same_weight(tucker, dense, start)


def test_multihead_attention_with_a_tucker_out_proj_trains_like_the_control():
    torch.manual_seed(0)
    control = nn.MultiheadAttention(8, 2, dtype=D)
    model = copy.deepcopy(control)
    model.out_proj = _pinned(control.out_proj)
    start = control.out_proj.weight.detach().clone()
    runs = [
        (control, torch.optim.SGD(control.parameters(), lr=LR)),
        (model, TDLRT(model.parameters(), lr=LR, tol=0.0)),
    ]
    for step in range(3):
        generator = torch.Generator().manual_seed(step)
        x = torch.randn(5, 3, 8, generator=generator, dtype=D)
        for module, optimizer in runs:
            optimizer.zero_grad()
            out, _ = module(x, x, x)
            out.pow(2).mean().backward()
            optimizer.step()
    _assert_same_weight(model.out_proj, control.out_proj, start)
    torch.testing.assert_close(
        model.in_proj_weight, control.in_proj_weight, rtol=1e-12, atol=1e-14
    )


# ------------------------------------ item 3: Parameters installed by PyTorch
def _train(model, steps=3, kind="linear", lr=0.3):
    optimizer = TDLRT(model.parameters(), lr=lr, tol=0.0)
    for step in range(steps):
        x, y = _batch(kind, step)
        optimizer.zero_grad()
        F.mse_loss(model(x), y).backward()
        optimizer.step()
    return optimizer


def test_load_state_dict_with_assign_then_tdlrt_keeps_the_manifold_step():
    dense, tucker = _pair("linear")
    start = dense.weight.detach().clone()
    reference = copy.deepcopy(tucker)
    old_core = tucker.core
    tucker.load_state_dict(copy.deepcopy(tucker.state_dict()), assign=True)
    assert tucker.core is not old_core  # PyTorch installed new Parameter objects
    _train(tucker)
    _train(reference)
    control = torch.optim.SGD(dense.parameters(), lr=0.3)
    for step in range(3):
        x, y = _batch("linear", step)
        control.zero_grad()
        F.mse_loss(dense(x), y).backward()
        control.step()
    assert _orthonormality(tucker) < 1e-13
    torch.testing.assert_close(tucker.weight, reference.weight, rtol=0, atol=0)
    _assert_same_weight(tucker, dense, start)


def test_parameters_replaced_by_conversion_or_item_assignment_are_found():
    dense, tucker = _pair("linear", dtype=torch.float32)
    flag = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    try:
        old_core = tucker.core
        tucker.double()
        dense.double()
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(flag)
    assert tucker.core is not old_core
    tucker.factors[1] = nn.Parameter(tucker.factors[1].detach().clone())
    with torch.no_grad():  # the float32 HOSVD's rounding: same start in float64
        dense.weight.copy_(tucker.weight)
    start = dense.weight.detach().clone()
    _train(tucker)
    control = torch.optim.SGD(dense.parameters(), lr=0.3)
    for step in range(3):
        x, y = _batch("linear", step)
        control.zero_grad()
        F.mse_loss(dense(x), y).backward()
        control.step()
    assert _orthonormality(tucker) < 1e-13  # float32 factors re-orthonormalized
    _assert_same_weight(tucker, dense, start)


def test_parameters_replaced_after_the_optimizer_was_built_are_refused():
    _, tucker = _pair("linear")
    optimizer = TDLRT(tucker.parameters(), lr=LR)
    tucker.load_state_dict(copy.deepcopy(tucker.state_dict()), assign=True)
    x, y = _batch("linear", 0)
    F.mse_loss(tucker(x), y).backward()
    with pytest.raises(
        RuntimeError, match=r"no longer holds the Parameter objects.*assign=True"
    ):
        optimizer.step()


# -------------------------------- item 6: factors written by another optimizer
def _sgd_on_factors(model, kind, steps=3, lr=0.5):
    sgd = torch.optim.SGD(model.parameters(), lr=lr)
    for step in range(steps):
        x, y = _batch(kind, 100 + step)
        sgd.zero_grad()
        F.mse_loss(model(x), y).backward()
        sgd.step()


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_factors_spoiled_by_sgd_are_repaired_and_the_step_is_the_dense_one(kind):
    dense, tucker = _pair(kind)
    _sgd_on_factors(tucker, kind)
    assert _orthonormality(tucker) > 1e-3, "SGD should have spoiled the factors"
    with torch.no_grad():  # the control starts from the same weight
        dense.weight.copy_(tucker.weight)
        dense.bias.copy_(tucker.bias)
    start = dense.weight.detach().clone()
    optimizer = TDLRT(tucker.parameters(), lr=LR, tol=0.0)
    control = torch.optim.SGD(dense.parameters(), lr=LR)
    x, y = _batch(kind, 0)
    for model, opt in ((dense, control), (tucker, optimizer)):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
    name = "TuckerLinear" if kind == "linear" else "TuckerConv2d"
    with pytest.warns(RuntimeWarning, match=rf"{name}.*not orthonormal.*unchanged"):
        optimizer.step()
    control.step()
    assert _orthonormality(tucker) < 1e-13
    _assert_same_weight(tucker, dense, start)


def test_a_tiny_step_after_sgd_moves_the_weight_by_order_lr():
    """The issue's case: a lr=1e-6 TDLRT step changed the weight by 65-130%."""
    torch.manual_seed(0)
    model = tuckerize(
        nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(16 * 8 * 8, 10),
        ),
        rank=8,
    )
    layers = [model[0], model[3]]
    x, y = torch.randn(32, 3, 8, 8), torch.randint(0, 10, (32,))
    sgd = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        sgd.zero_grad()
        F.cross_entropy(model(x), y).backward()
        sgd.step()
    assert max(_orthonormality(layer) for layer in layers) > 0.1
    before = [layer.weight.detach().clone() for layer in layers]
    optimizer = TDLRT(model, lr=1e-6)
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    with pytest.warns(RuntimeWarning) as caught:
        optimizer.step()
    messages = " ".join(str(w.message) for w in caught)
    assert "layer '0'" in messages and "layer '3'" in messages
    for layer, old in zip(layers, before):
        change = (layer.weight.detach() - old).norm() / old.norm()
        gradient = layer.weight_gradient().norm() / old.norm()
        # one SGD step of lr 1e-6 plus float32 rounding of the repair
        assert change <= 2e-6 * gradient + 1e-6, float(change)
        assert _orthonormality(layer) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_orthonormalize_keeps_the_weight_also_for_a_rank_deficient_factor(dtype):
    torch.manual_seed(0)
    layer = TuckerConv2d(6, 8, 3, rank=(4, 3, 3, 3), dtype=dtype)
    with torch.no_grad():
        layer.factors[0].mul_(torch.linspace(0.5, 2.0, 4, dtype=dtype))
        layer.factors[0].add_(0.3)
        layer.factors[1][:, 2] = layer.factors[1][:, 0]  # rank deficient: R singular
    weight = layer.weight.detach().clone()
    assert _orthonormality(layer) > 0.1
    layer.orthonormalize()
    eps = torch.finfo(dtype).eps
    # QR and one mode product per factor: a few ulps times the longest sum (8)
    error = (layer.weight.detach() - weight).norm() / weight.norm()
    assert error <= 100 * eps, float(error)
    assert _orthonormality(layer) <= 10 * 8 * eps


def test_factorized_layers_are_repaired_and_skip_one_step():
    torch.manual_seed(0)
    model = nn.Sequential(TuckerLinear(8, 6, rank=2, implementation="factorized"))
    model.double()
    _sgd_on_factors(model, "linear")
    optimizer = TDLRT(model, lr=LR)
    x, y = _batch("linear", 0)
    weight = model[0].weight.detach().clone()
    optimizer.zero_grad()
    F.mse_loss(model(x), y).backward()
    with pytest.warns(RuntimeWarning, match="not updated in this step"):
        optimizer.step()
    torch.testing.assert_close(model[0].weight.detach(), weight, rtol=1e-13, atol=0)
    optimizer.zero_grad()
    F.mse_loss(model(x), y).backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimizer.step()
    assert (model[0].weight.detach() - weight).norm() > 1e-3 * weight.norm()


def test_non_finite_factors_are_refused_with_the_layer_named():
    torch.manual_seed(0)
    model = nn.Sequential(TuckerLinear(8, 6, rank=3))
    with torch.no_grad():
        model[0].factors[0][0, 0] = float("nan")
    optimizer = TDLRT(model, lr=LR)
    F.mse_loss(model(torch.randn(4, 8)), torch.randn(4, 6)).backward()
    with pytest.raises(ValueError, match=r"layer '0'.*non-finite factors"):
        optimizer.step()


def test_long_float32_training_with_a_reload_never_warns():
    torch.manual_seed(0)
    model = nn.Sequential(
        TuckerLinear(64, 128, rank=16), nn.Tanh(), TuckerLinear(128, 10, rank=8)
    )
    optimizer = TDLRT(model, lr=0.05, momentum=0.9, tol=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step in range(40):
            if step == 20:  # bumps every factor's version: checked, not warned
                model.load_state_dict(copy.deepcopy(model.state_dict()))
            generator = torch.Generator().manual_seed(step)
            x = torch.randn(32, 64, generator=generator)
            y = torch.randint(0, 10, (32,), generator=generator)
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()


# ---------------------------------------------- item 8: state_dict snapshots
def test_a_state_dict_follows_the_live_weights_like_nn_linear():
    dense, tucker = _pair("linear")
    control = torch.optim.SGD(dense.parameters(), lr=LR)
    optimizer = TDLRT(tucker.parameters(), lr=LR, tol=0.0)
    live = {"dense": dense.state_dict(), "tucker": tucker.state_dict()}
    frozen = {
        "dense": copy.deepcopy(dense.state_dict()),
        "tucker": copy.deepcopy(tucker.state_dict()),
    }
    pointers = [p.data_ptr() for p in tucker.parameters()]
    x, y = _batch("linear", 0)
    for model, opt in ((dense, control), (tucker, optimizer)):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
    assert [p.data_ptr() for p in tucker.parameters()] == pointers  # in place

    def rebuilt(state):
        return reconstruct(state["core"], [state["factors.0"], state["factors.1"]])

    # the live dict shows the new weight and bias, both from the same moment
    torch.testing.assert_close(live["dense"]["weight"], dense.weight.detach())
    torch.testing.assert_close(
        rebuilt(live["tucker"]), tucker.weight.detach(), rtol=0, atol=1e-14
    )
    torch.testing.assert_close(live["tucker"]["bias"], tucker.bias.detach())
    # the deep copy is the weight at snapshot time, as for the control
    torch.testing.assert_close(
        rebuilt(frozen["tucker"]), frozen["dense"]["weight"], rtol=1e-13, atol=0
    )
    assert not torch.allclose(rebuilt(frozen["tucker"]), tucker.weight.detach())


def test_a_rank_change_leaves_an_old_state_dict_self_consistent():
    torch.manual_seed(0)
    layer = TuckerLinear(20, 30, rank=2, max_rank=12, dtype=D)
    optimizer = TDLRT(layer.parameters(), lr=0.5, tol=1e-3)
    snapshot = layer.state_dict()
    weight = layer.weight.detach().clone()
    x, y = torch.randn(64, 20, dtype=D), torch.randn(64, 30, dtype=D)
    F.mse_loss(layer(x), y).backward()
    optimizer.step()
    assert layer.rank != (2, 2), "the rank should have changed"
    old = reconstruct(snapshot["core"], [snapshot["factors.0"], snapshot["factors.1"]])
    torch.testing.assert_close(old, weight, rtol=0, atol=0)


# ----------------------------------------- item 11: whole-model pickling
def _round_trips(model):
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return {
        "deepcopy": copy.deepcopy(model),
        "pickle": pickle.loads(pickle.dumps(model)),
        "torch.save": torch.load(buffer, weights_only=False),
    }


@pytest.mark.parametrize("implementation", ["dense", "factorized"])
def test_whole_model_saving_round_trips_and_the_copy_trains_the_same(implementation):
    torch.manual_seed(0)

    def build():
        return nn.Sequential(
            TuckerConv2d(
                3, 4, 3, padding=1, rank=(2, 2, 3, 3), implementation=implementation
            ),
            nn.Flatten(),
            TuckerLinear(100, 6, rank=3, implementation=implementation),
        ).double()

    model = build()
    optimizer = TDLRT(model, lr=LR)
    x = torch.randn(4, 3, 5, 5, dtype=D)
    y = torch.randn(4, 6, dtype=D)
    optimizer.zero_grad()
    F.mse_loss(model(x), y).backward()
    optimizer.step()
    copies = _round_trips(model)
    reference_out = model(x)
    for how, clone in copies.items():
        torch.testing.assert_close(clone(x), reference_out, rtol=0, atol=0, msg=how)
        delta = clone[0].weight_delta
        if implementation == "dense":
            assert delta.untyped_storage().nbytes() == delta.element_size(), how
    # every copy trains exactly like the original
    results = {}
    for how, clone in {"original": model, **copies}.items():
        opt = TDLRT(clone, lr=LR)
        for _ in range(2):
            opt.zero_grad()
            F.mse_loss(clone(x), y).backward()
            opt.step()
        results[how] = clone(x).detach()
    for how, out in results.items():
        torch.testing.assert_close(out, results["original"], rtol=0, atol=0, msg=how)


# ----------------------------------- item 14: every state_dict entry a tensor
def test_every_state_dict_entry_is_a_tensor_and_safetensors_round_trip(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    torch.manual_seed(0)
    model = nn.Sequential(
        TuckerConv2d(3, 4, 3, rank=(2, 2, 3, 3), min_rank=(1, 1, 3, 3)),
        nn.Flatten(),
        TuckerLinear(36, 5, rank=2, max_rank=4, implementation="factorized"),
    )
    TDLRT(model, lr=LR)  # creates weight_delta, which must not be saved
    state = model.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert not any("weight_delta" in k for k in state)
    cloned = {k: v.clone() for k, v in state.items()}
    safetensors_torch.save_file(cloned, tmp_path / "model.safetensors")
    fresh = nn.Sequential(
        TuckerConv2d(3, 4, 3, rank=(4, 3, 3, 3)),
        nn.Flatten(),
        TuckerLinear(36, 5, rank=3),
    )
    fresh.load_state_dict(safetensors_torch.load_file(tmp_path / "model.safetensors"))
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    for a, b in zip((fresh[0], fresh[2]), (model[0], model[2])):
        assert (a.rank, a.min_rank, a.max_rank) == (b.rank, b.min_rank, b.max_rank)
        assert (a.adaptive_modes, a.implementation) == (
            b.adaptive_modes,
            b.implementation,
        )


def test_old_dict_extra_state_still_loads_and_bad_encodings_are_named():
    torch.manual_seed(0)
    layer = TuckerLinear(8, 6, rank=2, min_rank=1, max_rank=4)
    state = layer.state_dict()
    state["_extra_state"] = {  # what earlier versions stored
        "min_rank": (2, 1),
        "max_rank": (3, 4),
        "adaptive_modes": (0, 1),
        "implementation": "factorized",
    }
    fresh = TuckerLinear(8, 6, rank=3)
    fresh.load_state_dict(state)
    assert (fresh.min_rank, fresh.max_rank) == ((2, 1), (3, 4))
    assert fresh.implementation == "factorized"
    conv = TuckerConv2d(3, 4, 3)
    with pytest.raises(ValueError, match="not the format-1 encoding of an order-4"):
        conv.set_extra_state(layer.get_extra_state())


# ---------------------------- the optimizer's view: weight_delta bookkeeping
def test_weight_delta_is_in_the_group_but_not_in_the_optimizer_state_dict():
    torch.manual_seed(0)
    model = nn.Sequential(TuckerLinear(8, 6, rank=3), nn.Linear(6, 2))
    ordinary = list(model.parameters())
    optimizer = TDLRT(model, lr=LR, momentum=0.9)
    delta = model[0].weight_delta
    assert delta is not None and delta.untyped_storage().nbytes() == 4
    assert any(p is delta for p in optimizer.param_groups[0]["params"])
    state = optimizer.state_dict()
    assert len(state["param_groups"][0]["params"]) == len(ordinary)
    x, y = torch.randn(4, 8), torch.randn(4, 2)
    F.mse_loss(model(x), y).backward()
    optimizer.step()
    assert torch.equal(delta, torch.zeros_like(delta))  # never updated
    fresh_model = copy.deepcopy(model)
    fresh = TDLRT(fresh_model, lr=LR, momentum=0.9)
    fresh.load_state_dict(optimizer.state_dict())
    assert any(
        p is fresh_model[0].weight_delta for p in fresh.param_groups[0]["params"]
    )
    assert len(fresh.param_groups[0]["params"]) == len(ordinary) + 1
    names = prepare_ddp(copy.deepcopy(model))._ddp_params_and_buffers_to_ignore
    assert "0.weight_delta" in names


def test_weight_delta_follows_dtype_conversion_and_stays_one_element():
    layer = TuckerLinear(8, 6, rank=3)
    TDLRT(layer.parameters(), lr=LR)
    delta = layer.weight_delta
    layer.double()
    assert layer.weight_delta is delta and delta.dtype == D
    assert delta.untyped_storage().nbytes() == 8
    assert math.prod(delta.shape) == 48


def test_named_parameters_get_a_name_for_weight_delta_and_checkpoints_load():
    torch.manual_seed(0)
    model = nn.Sequential(TuckerLinear(8, 6, rank=3), nn.Linear(6, 2))
    optimizer = TDLRT(model.named_parameters(), lr=LR, momentum=0.9)
    names = optimizer.param_groups[0]["param_names"]
    assert names[-1] == "0.weight_delta" and len(names) == 7
    F.mse_loss(model(torch.randn(4, 8)), torch.randn(4, 2)).backward()
    optimizer.step()
    state = optimizer.state_dict()
    assert "0.weight_delta" not in state["param_groups"][0]["param_names"]
    clone = copy.deepcopy(model)
    fresh = TDLRT(clone.named_parameters(), lr=LR, momentum=0.9)
    fresh.load_state_dict(state)
    assert "0.weight_delta" in fresh.param_groups[0]["param_names"]
    packed = fresh.state[clone[0].core]["tucker_state"]
    reference = optimizer.state[model[0].core]["tucker_state"]
    torch.testing.assert_close(packed["core"], reference["core"], rtol=0, atol=0)


# ------------------- item 7: kernel modes next to a size-1 channel mode
def _low_rank_kernel_target(rank, seed=1):
    """A (16, 1, 7) weight whose mode-0 (output channel) rank is ``rank``."""
    generator = torch.Generator().manual_seed(seed)
    left = torch.randn(16, rank, generator=generator, dtype=D)
    right = torch.randn(rank, 7, generator=generator, dtype=D)
    return (left @ right).reshape(16, 1, 7)


def _fit(layer, parameters, target, steps):
    """``steps`` TDLRT steps of lr 1 on 0.5 ||W - A||^2; the relative errors."""
    optimizer = TDLRT(parameters, lr=1.0, tol=1e-10)
    errors = []
    for _ in range(steps):
        optimizer.zero_grad()
        (0.5 * (layer.weight - target).pow(2).sum()).backward()
        optimizer.step()
        errors.append(float((layer.weight.detach() - target).norm() / target.norm()))
    return errors


def test_a_conv1d_with_one_input_channel_reaches_a_target_in_one_step():
    """P2 (one lr-1 step lands on a target within reach) for Conv1d(1, 16, 7): the
    kernel mode keeps its 7 columns, so the layer's span holds the target."""
    torch.manual_seed(0)
    layer = TuckerConv1d(1, 16, 7, rank=(5, 1, 7), bias=False, dtype=D)
    assert layer.rank == (5, 1, 7)
    errors = _fit(layer, layer.parameters(), _low_rank_kernel_target(5), steps=1)
    assert errors[0] <= 1e-12
    assert layer.rank == (5, 1, 7)  # the target's ranks, kernel mode kept


def test_a_conv1d_with_one_input_channel_grows_to_a_full_rank_target():
    """Before, the kernel mode was cut to 5 and pinned: a target of output-channel
    rank 7 stayed 14% away forever (and the reported rank (7, 1, 5) was no multilinear
    rank). Now the output-channel rank grows to 7 and the target is reached."""
    torch.manual_seed(0)
    layer = TuckerConv1d(1, 16, 7, rank=(5, 1, 7), bias=False, dtype=D)
    errors = _fit(layer, layer.parameters(), _low_rank_kernel_target(7), steps=2)
    assert errors[-1] <= 1e-12, errors
    assert layer.rank == (7, 1, 7)


def test_an_adapter_on_a_conv1d_with_one_input_channel_reaches_its_target():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(1, 16, 7, dtype=D))
    base = model[0].weight.detach().clone()
    add_tucker_adapters(model, ["0"], rank=5, verbose=False)
    layer = model[0]
    assert layer.rank == (5, 1, 7)
    target = base + _low_rank_kernel_target(5)
    trainable = [p for p in model.parameters() if p.requires_grad]
    errors = _fit(layer, trainable, target, steps=1)
    assert errors[0] <= 1e-12


# ------------------------------------ torch.compile across a rank change
def test_torch_compile_follows_rank_changes_like_eager_mode():
    """A compiled tuckerized model recompiles when TDLRT changes a rank (the
    Parameters keep their identity, their shapes change) and computes what the eager
    model computes. The aot_eager backend traces exactly what inductor would compile
    (dynamo guards, AOTAutograd with the weight_delta Function) without a C++ build."""
    torch._dynamo.reset()

    def build():
        torch.manual_seed(0)
        return tuckerize(
            nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1),
                nn.ReLU(),
                nn.Flatten(),
                nn.Linear(8 * 6 * 6, 5),
            ),
            rank=2,
        )

    eager, model = build(), build()
    compiled = torch.compile(model, backend="aot_eager")
    runs = [
        (eager, TDLRT(eager, lr=0.5, tol=0.02)),
        (compiled, TDLRT(model, lr=0.5, tol=0.02)),
    ]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 6, 6, generator=generator)
    y = torch.randint(0, 5, (16,), generator=generator)
    ranks = []
    for _ in range(3):
        losses = []
        for module, optimizer in runs:
            optimizer.zero_grad()
            loss = F.cross_entropy(module(x), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-6, atol=0)
        assert (model[0].rank, model[3].rank) == (eager[0].rank, eager[3].rank)
        ranks.append((model[0].rank, model[3].rank))
    start = ((2, 2, 3, 3), (2, 2))
    assert start != ranks[0] != ranks[1], "ranks should change between compiled calls"
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager(x), rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()
