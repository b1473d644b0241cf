"""``TDLRT(basis_update_every=k)``: the bases are augmented every k steps, the core
takes Galerkin steps in between, the layer is truncated every k-th step.

The optimizer is compared with a reference written from the core functions (the
augmented step held untruncated, the Galerkin steps, the truncation that moves the
optimizer state), on a dense-gradient convolution and a factorized linear layer; a
checkpoint taken mid-cycle resumes exactly; ``k = 1`` is today's optimizer bit for bit.
"""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
import tensorly as tl  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import tuckerflow as tf  # noqa: E402
from tuckerflow._checks import available_ranks  # noqa: E402
from tuckerflow.integrators import (  # noqa: E402
    Adam,
    Momentum,
    k_gradients_from_factor_gradients,
    parallel_bug_update,
    tdlrt_step,
)
from tuckerflow.integrators._blocks import truncate_step  # noqa: E402
from tuckerflow.nn import (  # noqa: E402
    TDLRT,
    TuckerConv2d,
    TuckerLinear,
    load_checkpoint,
    save_checkpoint,
)
from tuckerflow.ranks import RankRule  # noqa: E402

LR, TOL, DECAY = 0.4, 0.05, 1e-3


def _model(seed=0, linear_rank=2):
    torch.manual_seed(seed)
    return nn.Sequential(
        TuckerConv2d(
            3, 6, 3, padding=1, bias=False, rank=(3, 2, 3, 3), dtype=torch.float64
        ),
        nn.Tanh(),
        nn.Flatten(),
        TuckerLinear(
            150,
            4,
            bias=False,
            rank=linear_rank,
            implementation="factorized",
            dtype=torch.float64,
        ),
    )


def _batch(step):
    generator = torch.Generator().manual_seed(100 + step)
    x = torch.randn(8, 3, 5, 5, generator=generator, dtype=torch.float64)
    y = torch.randn(8, 4, generator=generator, dtype=torch.float64)
    return x, y


def _loss(conv_weight, linear_weight, x, y):
    hidden = torch.tanh(F.conv2d(x, conv_weight, padding=1)).flatten(1)
    return F.mse_loss(hidden @ linear_weight.t(), y)


def _options(adam):
    return {"adam": True} if adam else {"momentum": 0.9}


def _train(model, optimizer, start, stop, trace=None):
    for step in range(start, stop):
        x, y = _batch(step)
        optimizer.zero_grad()
        F.mse_loss(model(x), y).backward()
        optimizer.step()
        if trace is not None:
            trace.append(_snapshot(model))


def _layers(model):
    return [model[0], model[3]]


def _snapshot(model):
    return [
        (layer.rank, layer.weight.detach().clone(), layer.orthonormality_error())
        for layer in _layers(model)
    ]


def _tensors(value):
    """Every tensor of a (nested) optimizer state, in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for key in sorted(value, key=str) for t in _tensors(value[key])]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    return []


def _rebuild(core, factors):
    with tf.use_backend("pytorch"):
        return tl.tenalg.multi_mode_dot(core, factors)


def _held_ranks(core, factors, shape):
    """The ranks of the untruncated augmented point: ``min(n_i, r_i + k_i)`` (no
    K-step for full-rank modes), cut to what the other modes allow."""
    ranks = tuple(core.shape)
    total = 1
    for r in ranks:
        total *= r
    dims = tuple(
        r if f.shape[0] == r else min(f.shape[0], r + min(r, total // r))
        for f, r in zip(factors, ranks)
    )
    return tuple(
        min(d, a, b)
        for d, a, b in zip(dims, available_ranks(dims), available_ranks(shape))
    )


class _Reference:
    """The schedule written out with the core functions, one layer at a time.

    ``anchor='cycle'`` moves the K-state at the truncation from the core at which it
    was last expressed (the core held at the cycle's first step); ``'previous'`` uses
    the core before the last Galerkin step instead (wrong for ``k > 2``), to show the
    comparison notices the difference.
    """

    def __init__(self, model, every, adam, anchor="cycle"):
        self.every, self.anchor_rule = every, anchor
        self.bounds = [(layer.min_rank, layer.max_rank) for layer in _layers(model)]
        self.shapes = [layer.weight_shape for layer in _layers(model)]
        self.points = [
            (layer.core.detach().clone(), [f.detach().clone() for f in layer.factors])
            for layer in _layers(model)
        ]
        with tf.use_backend("pytorch"):
            self.states = [
                Adam.init(point) if adam else Momentum.init(point, 0.9)
                for point in self.points
            ]
        self.position = [0, 0]
        self.anchors = [None, None]

    def step(self, x, y):
        (core1, factors1), (core2, factors2) = self.points
        weight1 = _rebuild(core1, factors1).requires_grad_(True)
        core2 = core2.clone().requires_grad_(True)
        factors2 = [f.clone().requires_grad_(True) for f in factors2]
        loss = _loss(weight1, _rebuild(core2, factors2), x, y)
        grad1, core_grad2, *factor_grads2 = torch.autograd.grad(
            loss, [weight1, core2, *factors2]
        )
        core2, factors2 = core2.detach(), [f.detach() for f in factors2]
        with tf.use_backend("pytorch"):
            self._advance(0, grad1 + DECAY * weight1.detach(), None)
            gram = [
                u @ (c @ c.t())
                for u, c in (
                    (factors2[m], tl.unfold(core2, m)) for m in range(len(factors2))
                )
            ]
            self._advance(
                1,
                core_grad2 + DECAY * core2,
                [g + DECAY * extra for g, extra in zip(factor_grads2, gram)],
            )

    def _advance(self, index, grad, factor_grads):
        """Layer ``index``: dense gradient ``grad`` (factor_grads None), or core and
        factor gradients (weight decay included in all of them)."""
        core, factors = self.points[index]
        state, low_high = self.states[index], self.bounds[index]
        position = self.position[index]
        last = position == self.every - 1
        if position == 0:  # augment, Galerkin step with this gradient
            rule = (
                {"tol": TOL, "min_rank": low_high[0], "max_rank": low_high[1]}
                if last
                else dict.fromkeys(
                    ("rank", "min_rank", "max_rank"),
                    _held_ranks(core, factors, self.shapes[index]),
                )
            )
            if factor_grads is None:
                new, state = tdlrt_step((core, factors), grad, LR, state=state, **rule)
            else:
                k_grads = k_gradients_from_factor_gradients(
                    (core, factors), factor_grads
                )
                new, state = parallel_bug_update(
                    (core, factors), grad, k_grads, LR, state=state, **rule
                )
            self.anchors[index] = new.core
            core, factors = new.core, list(new.factors)
        else:  # Galerkin step of the core, factors fixed
            if factor_grads is None:
                core_grad = tl.tenalg.multi_mode_dot(
                    grad, factors, transpose=True
                )  # G ×_i U_i^T + wd W ×_i U_i^T = dL/dC + wd C
            else:
                core_grad = grad
            state = state.begin_step()
            direction, state = state.core_direction(core_grad)
            previous, core = core, core - LR * direction
            if last:
                old = self.anchors[index] if self.anchor_rule == "cycle" else previous
                new, state = truncate_step(
                    core,
                    factors,
                    RankRule(tol=TOL, min_rank=low_high[0], max_rank=low_high[1]),
                    state=state,
                    old_factors=factors,
                    old_q=[None] * len(factors),
                    old_core=old,
                )
                core, factors = new.core, list(new.factors)
        self.points[index] = (core, factors)
        self.states[index] = state
        self.position[index] = 0 if last else position + 1

    def snapshot(self):
        return [
            (tuple(core.shape), _rebuild(core, factors))
            for core, factors in self.points
        ]


def _compare(model, reference, atol=1e-12):
    for layer, (rank, weight) in zip(_layers(model), reference.snapshot()):
        assert layer.rank == rank
        torch.testing.assert_close(layer.weight.detach(), weight, atol=atol, rtol=0)


@pytest.mark.parametrize("adam", [False, True], ids=["momentum", "adam"])
@pytest.mark.parametrize("every", [1, 2, 3])
def test_the_schedule_is_the_core_functions_step_by_step(every, adam):
    model = _model()
    reference = _Reference(model, every, adam)
    optimizer = TDLRT(
        model,
        lr=LR,
        tol=TOL,
        weight_decay=DECAY,
        basis_update_every=every,
        **_options(adam),
    )
    initial = [layer.rank for layer in _layers(model)]
    seen = set()
    for step in range(3 * every + 1):
        x, y = _batch(step)
        reference.step(x, y)
        _train(model, optimizer, step, step + 1)
        _compare(model, reference)
        held = (step % every) != every - 1
        for layer in _layers(model):
            errors = layer.orthonormality_error()
            assert max(errors) < 1e-13
            cycle = optimizer.state[layer.core].get("basis_cycle")
            assert (cycle is not None) == held
            if held:
                assert cycle["position"] == step % every + 1
            else:
                seen.add(layer.rank)
    assert seen - set(initial), "no truncation changed a rank"


@pytest.mark.parametrize("adam", [False, True], ids=["momentum", "adam"])
def test_the_k_state_moves_from_the_core_it_was_expressed_at(adam):
    # with k = 3 the core before the last Galerkin step is not the core at which the
    # K-state was expressed: the reference that uses it must disagree
    model = _model()
    wrong = _Reference(model, 3, adam, anchor="previous")
    optimizer = TDLRT(
        model,
        lr=LR,
        tol=TOL,
        weight_decay=DECAY,
        basis_update_every=3,
        **_options(adam),
    )
    for step in range(7):
        wrong.step(*_batch(step))
    _train(model, optimizer, 0, 7)
    differences = [
        float((layer.weight.detach() - weight).abs().max())
        if layer.rank == rank
        else float("inf")
        for layer, (rank, weight) in zip(_layers(model), wrong.snapshot())
    ]
    assert max(differences) > 1e-8


@pytest.mark.parametrize(
    "options",
    [{}, {"momentum": 0.9, "weight_decay": 1e-3}, {"adam": True}, {"budget": 900}],
)
def test_k_one_is_the_default_optimizer_bit_for_bit(options):
    traces = []
    for extra in ({}, {"basis_update_every": 1}):
        model = _model()
        optimizer = TDLRT(model, lr=LR, **options, **extra)
        trace = []
        _train(model, optimizer, 0, 5, trace)
        traces.append((trace, model.state_dict(), optimizer.state_dict()))
    (trace_a, model_a, opt_a), (trace_b, model_b, opt_b) = traces
    for a, b in zip(trace_a, trace_b):
        for (rank_a, weight_a, _), (rank_b, weight_b, _) in zip(a, b):
            assert rank_a == rank_b
            assert torch.equal(weight_a, weight_b)
    for key in model_a:
        assert torch.equal(model_a[key], model_b[key])
    tensors_a, tensors_b = _tensors(opt_a["state"]), _tensors(opt_b["state"])
    assert len(tensors_a) == len(tensors_b)
    assert all(torch.equal(a, b) for a, b in zip(tensors_a, tensors_b))
    assert opt_a["param_groups"][0]["basis_update_every"] == 1


@pytest.mark.parametrize("adam", [False, True], ids=["momentum", "adam"])
def test_a_checkpoint_mid_cycle_resumes_exactly(tmp_path, adam):
    def optimizer_for(model):
        return TDLRT(model, lr=LR, tol=TOL, basis_update_every=3, **_options(adam))

    straight = _model()
    _train(straight, optimizer_for(straight), 0, 11)

    model = _model()
    optimizer = optimizer_for(model)
    _train(model, optimizer, 0, 4)  # one cycle done, one step into the next
    cycle = optimizer.state[model[0].core]["basis_cycle"]
    assert cycle["position"] == 1 and "anchor" in cycle
    save_checkpoint(tmp_path / "run.pt", model, optimizer)
    resumed = _model(seed=1, linear_rank=1)  # other values, other ranks
    resumed_optimizer = optimizer_for(resumed)
    load_checkpoint(tmp_path / "run.pt", resumed, resumed_optimizer)
    assert [layer.rank for layer in _layers(resumed)] == [
        layer.rank for layer in _layers(model)
    ]
    _train(resumed, resumed_optimizer, 4, 11)
    for a, b in zip(_layers(resumed), _layers(straight)):
        assert a.rank == b.rank
        torch.testing.assert_close(
            a.weight.detach(), b.weight.detach(), atol=1e-13, rtol=0
        )


def test_a_budget_holds_after_every_truncation():
    model = _model()
    budget = 350
    optimizer = TDLRT(model, lr=LR, budget=budget, momentum=0.9, basis_update_every=4)
    sizes = []
    for step in range(12):
        _train(model, optimizer, step, step + 1)
        size = sum(layer.parameter_count() for layer in _layers(model))
        if step % 4 == 3:
            assert size <= budget
            for layer in _layers(model):
                assert "basis_cycle" not in optimizer.state[layer.core]
        sizes.append(size)
    assert max(sizes) > budget  # in between, the layers hold their augmented size


def test_vanilla_ignores_it():
    weights = []
    for every in (1, 3):
        model = _model()
        optimizer = TDLRT(
            model, lr=0.1, method="vanilla", momentum=0.9, basis_update_every=every
        )
        _train(model, optimizer, 0, 4)
        weights.append([layer.weight.detach() for layer in _layers(model)])
    for a, b in zip(*weights):
        assert torch.equal(a, b)


@pytest.mark.parametrize("value", [0, -2, 1.5, True, "2", None])
def test_basis_update_every_must_be_a_positive_int(value):
    model = _model()
    with pytest.raises(ValueError, match=r"basis_update_every must be an int >= 1"):
        TDLRT(model, lr=0.1, basis_update_every=value)
    optimizer = TDLRT([model[0].core, *model[0].factors], lr=0.1)
    with pytest.raises(ValueError, match=r"basis_update_every must be an int >= 1"):
        optimizer.add_param_group(
            {"params": [model[3].core, *model[3].factors], "basis_update_every": value}
        )


def test_per_group_values_and_a_layer_without_gradient_keeps_its_place():
    model = _model()
    optimizer = TDLRT(
        [
            {"params": [model[0].core, *model[0].factors], "basis_update_every": 2},
            {"params": [model[3].core, *model[3].factors]},
        ],
        lr=LR,
        momentum=0.9,
    )
    _train(model, optimizer, 0, 1)
    assert optimizer.state[model[0].core]["basis_cycle"]["position"] == 1
    assert "basis_cycle" not in optimizer.state[model[3].core]
    # a step in which the convolution gets no gradient does not advance its cycle
    x, y = _batch(1)
    optimizer.zero_grad()
    F.mse_loss(model[3](model[2](model[1](model[0](x).detach()))), y).backward()
    optimizer.step()
    assert optimizer.state[model[0].core]["basis_cycle"]["position"] == 1
    _train(model, optimizer, 2, 3)
    assert "basis_cycle" not in optimizer.state[model[0].core]
    assert model[0].rank[0] <= model[0].max_rank[0]


def test_a_copied_state_is_not_aliased_by_the_layer():
    # the anchor core must not share storage with the layer's core, which the
    # Galerkin steps overwrite in place
    model = _model()
    optimizer = TDLRT(model, lr=LR, tol=TOL, momentum=0.9, basis_update_every=3)
    _train(model, optimizer, 0, 1)
    anchor = optimizer.state[model[0].core]["basis_cycle"]["anchor"]
    saved = copy.deepcopy(anchor)
    _train(model, optimizer, 1, 2)
    assert torch.equal(anchor, saved)
    assert not torch.equal(model[0].core.detach(), saved)


def test_two_workers_stay_identical_mid_cycle_and_match_one_process(tmp_path):
    if not torch.distributed.is_available():  # pragma: no cover
        pytest.skip("torch.distributed is not available")
    import test_distributed as distributed

    def adapt(text):
        text = text.replace(
            "STEPS, CHECKPOINT_STEP, GLOBAL_BATCH = 6, 3, 32",
            "STEPS, CHECKPOINT_STEP, GLOBAL_BATCH = 7, 4, 32",  # ends mid-cycle
        )
        old = "TDLRT(model, lr=0.3, momentum=0.9, tol=0.02)"
        assert old in text
        return text.replace(old, old[:-1] + ", basis_update_every=3)")

    distributed._run_two_workers(adapt(distributed.WORKER), tmp_path)
    states = [
        torch.load(tmp_path / f"worker{r}.pt", weights_only=True) for r in range(2)
    ]
    for key, value in states[0].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, states[1][key]), key
    namespace: dict = {}
    exec(adapt(distributed.COMMON), namespace)

    def train(model, optimizer, start):
        for step in range(start, namespace["STEPS"]):
            x, y = namespace["global_batch"](step)
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()

    reference = namespace["build"]()
    train(reference, namespace["make_optimizer"](reference), 0)
    assert tuple(reference[0].core.shape) != (4, 3, 3, 3)  # held augmented
    for key, value in reference.state_dict().items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            torch.testing.assert_close(states[0][key], value, atol=1e-10, rtol=0)
    # worker 0's checkpoint, one step into a cycle, resumes in one process
    model = namespace["build"]()
    optimizer = namespace["make_optimizer"](model)
    load_checkpoint(tmp_path / "checkpoint.pt", model, optimizer)
    assert optimizer.state[model[0].core]["basis_cycle"]["position"] == 1
    train(model, optimizer, namespace["CHECKPOINT_STEP"])
    for key, value in reference.state_dict().items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            torch.testing.assert_close(
                model.state_dict()[key], value, atol=1e-10, rtol=0
            )


@pytest.mark.parametrize("position", [0, 1, 2])
def test_a_non_finite_step_leaves_the_cycle_as_it_was(position):
    # a NaN gradient at the cycle's first, a middle or its last step skips the
    # step: weights, optimizer state and the cycle position are untouched, and the
    # next finite steps continue as if the bad batch had never come
    every = 3
    model, clean = _model(), _model()
    optimizer = TDLRT(model, lr=LR, tol=TOL, momentum=0.9, basis_update_every=every)
    reference = TDLRT(clean, lr=LR, tol=TOL, momentum=0.9, basis_update_every=every)
    _train(model, optimizer, 0, position)
    _train(clean, reference, 0, position)
    before = copy.deepcopy(optimizer.state_dict())
    weights = _snapshot(model)
    x, y = _batch(position)
    optimizer.zero_grad()
    (F.mse_loss(model(x), y) * float("nan")).backward()
    with pytest.warns(RuntimeWarning, match="skipped"):
        optimizer.step()
    for (rank, weight, _), (rank_after, weight_after, _) in zip(
        weights, _snapshot(model)
    ):
        assert rank == rank_after and torch.equal(weight, weight_after)
    after = optimizer.state_dict()
    assert all(
        torch.equal(a, b)
        for a, b in zip(_tensors(before["state"]), _tensors(after["state"]))
    )
    _train(model, optimizer, position, 2 * every + 1)
    _train(clean, reference, position, 2 * every + 1)
    _compare_models(model, clean)


def _compare_models(model, clean):
    for layer, other in zip(_layers(model), _layers(clean)):
        assert layer.rank == other.rank
        assert torch.equal(layer.weight, other.weight)
