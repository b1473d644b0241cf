"""Pluggable optimizer rules: a rule defined here, in the test file only, trains a
Tucker model with ``TDLRT(rule=...)`` through rank changes and a checkpoint; the
``momentum``/``adam`` shorthands equal their rule specs bit for bit; checkpoints of
the format before named rules still load."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import tuckerflow as tf  # noqa: E402
from tuckerflow.integrators.state import (  # noqa: E402
    OptimizerState,
    basis_buffers,
    core_buffer,
)
from tuckerflow.nn import (  # noqa: E402
    TDLRT,
    TuckerLinear,
    load_checkpoint,
    register_ordinary_rule,
    save_checkpoint,
)
from tuckerflow.nn import optim as nn_optim  # noqa: E402

NAME = "test-dampened-heavy-ball"


# ---------------------------------------------------------------- the new rule
@dataclasses.dataclass(frozen=True)
class DampenedHeavyBall(OptimizerState):
    """Heavy ball with dampening, ``b <- beta b + (1 - tau) g``, step along ``b``;
    it also records ``e``, the summed squared gradients (a second moment, unused by
    the step: here to be carried through the squared transport), and counts steps."""

    name = NAME

    beta: float
    tau: float
    count: int
    core: Any = core_buffer()
    core_energy: Any = core_buffer(second_moment=True)
    bases: tuple = basis_buffers()
    bases_energy: tuple = basis_buffers(second_moment=True)

    @classmethod
    def init(cls, tucker, beta=0.9, tau=0.25):
        if not 0 <= tau < 1:
            raise ValueError(f"tau must lie in [0, 1), got {tau}")
        return cls(beta=beta, tau=tau, count=0, **cls.zero_buffers(tucker))

    def begin_step(self):
        return dataclasses.replace(self, count=self.count + 1)

    def _direction(self, buffer, energy, grad):
        buffer = self.beta * buffer + (1.0 - self.tau) * grad
        energy = energy + grad * grad
        return buffer, buffer, energy

    def core_direction(self, grad):
        direction, core, energy = self._direction(self.core, self.core_energy, grad)
        return direction, dataclasses.replace(self, core=core, core_energy=energy)

    def basis_direction(self, mode, grad):
        bases, energy = list(self.bases), list(self.bases_energy)
        direction, bases[mode], energy[mode] = self._direction(
            bases[mode], energy[mode], grad
        )
        return direction, dataclasses.replace(
            self, bases=tuple(bases), bases_energy=tuple(energy)
        )

    def basis_memory(self):
        return self.bases

    def with_new_directions(self, blocks):
        return dataclasses.replace(self, core=self.core + blocks)


def dampened_heavy_ball(parameters, grads, states, *, lr, weight_decay, beta, tau):
    """The rule on ordinary parameters (per parameter, as the hand computation)."""
    for parameter, grad, state in zip(parameters, grads, states):
        grad = grad + weight_decay * parameter
        if not state:
            state["buffer"] = torch.zeros_like(parameter)
            state["energy"] = torch.zeros_like(parameter)
        state["buffer"].mul_(beta).add_((1.0 - tau) * grad)
        state["energy"].add_(grad * grad)
        parameter.sub_(lr * state["buffer"])


@pytest.fixture
def ordinary_rule():
    register_ordinary_rule(NAME, dampened_heavy_ball)
    yield
    nn_optim._ORDINARY_RULES.pop(NAME)


def _model(bias=True):
    torch.manual_seed(0)
    return nn.Sequential(
        TuckerLinear(16, 12, rank=4, max_rank=10, bias=bias, dtype=torch.float64),
        nn.Tanh(),
        # two layers of one shape: their states are stacked by the batched steps
        TuckerLinear(12, 12, rank=3, max_rank=10, bias=bias, dtype=torch.float64),
        nn.Tanh(),
        TuckerLinear(12, 12, rank=3, max_rank=10, bias=bias, dtype=torch.float64),
    )


def _batch(step):
    generator = torch.Generator().manual_seed(100 + step)
    x = torch.randn(24, 16, generator=generator, dtype=torch.float64)
    return x, torch.sin(2 * x[:, :12])


def _train(model, optimizer, start, stop):
    for step in range(start, stop):
        x, y = _batch(step)
        optimizer.zero_grad()
        F.mse_loss(model(x), y).backward()
        optimizer.step()


def _ranks(model):
    return [m.rank for m in model if isinstance(m, TuckerLinear)]


RULE = DampenedHeavyBall.configure(beta=0.8, tau=0.3)


def test_the_rule_is_registered_and_configured_as_plain_data():
    assert tf.rule_class(NAME) is DampenedHeavyBall
    assert tf.registered_rules()[NAME] is DampenedHeavyBall
    assert RULE == (NAME, {"beta": 0.8, "tau": 0.3})
    with pytest.raises(TypeError, match="gamma"):
        DampenedHeavyBall.configure(gamma=1.0)
    with pytest.raises(ValueError, match="no optimizer rule is registered"):
        tf.rule_class("no-such-rule")


def test_a_rule_name_cannot_be_taken_twice():
    with pytest.raises(ValueError, match="is taken by"):

        @dataclasses.dataclass(frozen=True)
        class Other(OptimizerState):
            name = "momentum"


@pytest.mark.parametrize("method", ["tdlrt", "parallel"])
def test_the_core_steps_carry_the_new_rule_through_rank_changes(method):
    with tf.use_backend("numpy"):
        tucker = tf.random_tucker((12, 10, 8), (3, 3, 2), random_state=0)
        state = DampenedHeavyBall.init(tucker, beta=0.8, tau=0.3)
        step = tf.tdlrt_step if method == "tdlrt" else tf.parallel_bug_step
        rng = __import__("numpy").random.default_rng(0)
        ranks = {tuple(tucker.core.shape)}
        for _ in range(4):
            grad = rng.standard_normal((12, 10, 8))
            tucker, state = step(tucker, grad, 0.5, tol=0.05, state=state)
            state.check(tucker.core, tucker.factors)  # shapes follow the ranks
            ranks.add(tuple(tucker.core.shape))
        assert len(ranks) > 1, "the ranks should have changed"
        assert state.count == 4
        packed = state.pack()
        assert packed["rule"] == NAME and isinstance(packed["bases"], list)
        back = OptimizerState.unpack(packed)
        assert type(back) is DampenedHeavyBall and back.count == 4
        for a, b in zip(back._buffers().values(), state._buffers().values()):
            for x, y in zip(
                a if isinstance(a, tuple) else [a], b if isinstance(b, tuple) else [b]
            ):
                assert x is y


def test_one_step_equals_the_hand_computation(ordinary_rule):
    """Full rank (no truncation): the step is the dense rule on W, and the bias
    takes the registered ordinary update."""
    torch.manual_seed(0)
    layer = TuckerLinear(8, 6, rank=(6, 8), min_rank=(6, 8), dtype=torch.float64)
    assert layer.rank == (6, 6)
    weight = layer.weight.detach().clone()
    bias = layer.bias.detach().clone()
    optimizer = TDLRT(layer, lr=0.1, tol=0.0, weight_decay=0.01, rule=RULE)
    beta, tau, lr, wd = 0.8, 0.3, 0.1, 0.01
    buffers = {"w": torch.zeros_like(weight), "b": torch.zeros_like(bias)}
    energy = {"w": torch.zeros_like(weight), "b": torch.zeros_like(bias)}
    for _ in range(3):
        x = torch.randn(5, 8, dtype=torch.float64)
        optimizer.zero_grad()
        layer(x).pow(2).sum().backward()
        optimizer.step()
        # by hand: the dense rule on W and on the bias
        w = weight.clone().requires_grad_(True)
        b = bias.clone().requires_grad_(True)
        (x @ w.T + b).pow(2).sum().backward()
        for key, value, grad in (("w", weight, w.grad), ("b", bias, b.grad)):
            grad = grad + wd * value
            buffers[key] = beta * buffers[key] + (1 - tau) * grad
            energy[key] = energy[key] + grad * grad
        weight = weight - lr * buffers["w"]
        bias = bias - lr * buffers["b"]
        torch.testing.assert_close(layer.weight.detach(), weight, atol=1e-12, rtol=0)
        torch.testing.assert_close(layer.bias.detach(), bias, atol=1e-14, rtol=0)
        assert layer.rank == (6, 6)
    packed = optimizer.state[layer.core]["tucker_state"]
    assert packed["rule"] == NAME and packed["count"] == 3
    torch.testing.assert_close(
        optimizer.state[layer.bias]["energy"], energy["b"], atol=1e-12, rtol=0
    )


@pytest.mark.parametrize("basis_update_every", [1, 2])
def test_the_new_rule_trains_through_rank_changes_and_a_checkpoint(
    tmp_path, ordinary_rule, basis_update_every
):
    def optimizer_for(model):
        return TDLRT(
            model,
            lr=0.3,
            tol=0.005,
            rule=RULE,
            basis_update_every=basis_update_every,
        )

    straight = _model()
    optimizer = optimizer_for(straight)
    start = _ranks(straight)
    _train(straight, optimizer, 0, 12)
    assert _ranks(straight) != start, "the ranks should have changed"
    for layer in straight:
        if isinstance(layer, TuckerLinear):
            packed = optimizer.state[layer.core]["tucker_state"]
            assert packed["rule"] == NAME
            with tf.use_backend("pytorch"):
                state = OptimizerState.unpack(packed)
                # (mid-cycle the state belongs to the held augmented point)
                if basis_update_every == 1:
                    state.check(
                        layer.core.detach(), [f.detach() for f in layer.factors]
                    )

    model = _model()
    optimizer = optimizer_for(model)
    _train(model, optimizer, 0, 7)  # (mid-cycle for basis_update_every=2)
    save_checkpoint(tmp_path / "run.pt", model, optimizer, step=7)
    resumed = _model()
    fresh = optimizer_for(resumed)
    assert load_checkpoint(tmp_path / "run.pt", resumed, fresh)["step"] == 7
    _train(resumed, fresh, 7, 12)
    assert _ranks(resumed) == _ranks(straight)
    for a, b in zip(resumed.state_dict().values(), straight.state_dict().values()):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_a_rule_without_an_ordinary_update_is_refused_for_ordinary_parameters():
    with pytest.raises(ValueError, match=r"register_ordinary_rule\('test-dampened"):
        TDLRT(_model(bias=True), lr=0.05, rule=RULE)
    # Tucker weights only: no ordinary update needed
    model = _model(bias=False)
    optimizer = TDLRT(model, lr=0.05, tol=0.02, rule=RULE)
    _train(model, optimizer, 0, 2)


def test_rule_spec_errors():
    model = _model(bias=False)
    with pytest.raises(ValueError, match="not both"):
        TDLRT(model, lr=0.1, rule="adam", adam=True)
    with pytest.raises(ValueError, match="not both"):
        TDLRT(model, lr=0.1, rule="adam", momentum=0.9)
    with pytest.raises(ValueError, match="no optimizer rule is registered"):
        TDLRT(model, lr=0.1, rule="adamw")
    with pytest.raises(TypeError, match="gamma"):
        TDLRT(model, lr=0.1, rule=("adam", {"gamma": 1.0}))
    with pytest.raises(TypeError, match="rule must be"):
        TDLRT(model, lr=0.1, rule=3)
    with pytest.raises(ValueError, match="betas"):  # Adam.init's own check
        TDLRT(model, lr=0.1, rule=tf.Adam.configure(betas=(0.9, 1.5)))
    with pytest.raises(ValueError, match="tau"):
        TDLRT(model, lr=0.1, rule=DampenedHeavyBall.configure(tau=1.0))


# ---------------------------------------------------- the shorthands, old format
SHORTHANDS = [
    (
        {"momentum": 0.9},
        {"rule": tf.Momentum.configure(beta=0.9)},
    ),
    (
        {"momentum": 0.8, "nesterov": True, "weight_decay": 1e-3},
        {"rule": ("momentum", {"beta": 0.8, "nesterov": True}), "weight_decay": 1e-3},
    ),
    ({"adam": True}, {"rule": "adam"}),
    ({"adam": True}, {"rule": tf.Adam}),
    (
        {"adam": True, "betas": (0.8, 0.99), "eps": 1e-6},
        {"rule": tf.Adam.configure(betas=(0.8, 0.99), eps=1e-6)},
    ),
]


@pytest.mark.parametrize(("shorthand", "spec"), SHORTHANDS)
@pytest.mark.parametrize("implementation", ["dense", "factorized"])
def test_the_shorthands_equal_their_rule_specs_bit_for_bit(
    shorthand, spec, implementation
):
    def run(options):
        torch.manual_seed(0)
        model = nn.Sequential(
            TuckerLinear(
                16, 12, rank=4, implementation=implementation, dtype=torch.float64
            ),
            nn.Tanh(),
            nn.Linear(12, 12, dtype=torch.float64),
        )
        optimizer = TDLRT(model, lr=0.01, tol=0.02, **options)
        _train(model, optimizer, 0, 6)
        return model, optimizer

    a, optimizer_a = run(shorthand)
    b, optimizer_b = run(spec)
    for x, y in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(x, y, atol=0, rtol=0)
    ordinary_a = optimizer_a.state[a[2].weight]
    ordinary_b = optimizer_b.state[b[2].weight]
    assert ordinary_a.keys() == ordinary_b.keys()
    for key in ordinary_a:
        torch.testing.assert_close(ordinary_a[key], ordinary_b[key], atol=0, rtol=0)


def _old_format(state_dict):
    """A state_dict as TDLRT wrote it before named rules: packed states carry
    ``"adam": True/False`` instead of ``"rule"``, groups have no ``"rule"``."""
    old = copy.deepcopy(state_dict)
    for entry in old["state"].values():
        packed = entry.get("tucker_state")
        if packed is not None:
            name = packed.pop("rule")
            entry["tucker_state"] = {"adam": name == "adam", **packed}
    for group in old["param_groups"]:
        del group["rule"]
    return old


@pytest.mark.parametrize(
    ("options", "fields"),
    [
        (
            {"momentum": 0.9, "nesterov": True},
            ["adam", "beta", "nesterov", "core", "bases"],
        ),
        (
            {"adam": True, "betas": (0.8, 0.99)},
            [
                "adam",
                "beta1",
                "beta2",
                "eps",
                "count",
                "core_m",
                "core_v",
                "bases_m",
                "bases_v",
            ],
        ),
    ],
    ids=["momentum", "adam"],
)
def test_checkpoints_of_the_format_before_named_rules_still_load(options, fields):
    def optimizer_for(model):
        return TDLRT(model, lr=0.05, tol=0.02, **options)

    straight = _model()
    _train(straight, optimizer_for(straight), 0, 8)

    model = _model()
    optimizer = optimizer_for(model)
    _train(model, optimizer, 0, 4)
    old = _old_format(optimizer.state_dict())
    packed = next(
        e["tucker_state"] for e in old["state"].values() if "tucker_state" in e
    )
    assert list(packed) == fields  # the keys, in order, that main wrote
    assert "rule" not in old["param_groups"][0]
    resumed = _model()
    resumed.load_state_dict(model.state_dict())
    fresh = optimizer_for(resumed)
    fresh.load_state_dict(old)
    _train(resumed, fresh, 4, 8)
    for a, b in zip(resumed.state_dict().values(), straight.state_dict().values()):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_a_state_instance_as_rule_is_refused_briefly():
    # new-user trial: rule=tf.Adam.init(Y) printed every buffer of the state
    layer = TuckerLinear(8, 6, dtype=torch.float64)
    with tf.use_backend("pytorch"):
        state = tf.Adam.init(layer.tucker())
    with pytest.raises(TypeError, match="pass its class or its name") as error:
        TDLRT(layer.parameters(), lr=0.1, rule=state)
    assert len(str(error.value)) < 400
