"""A global parameter budget (docs/concepts.rst): never exceeded, equivalent to
tol = 0 when it is large enough, per-layer bounds respected, deterministic."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuckerflow.ranks import (
    GLOBAL_CRITERIA,
    parameter_count,
    ranks_from_global_budget,
)

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from tuckerflow.nn import (  # noqa: E402
    TDLRT,
    TuckerConv2d,
    TuckerLayer,
    TuckerLinear,
    compression_report,
    tuckerize,
)
from tuckerflow.nn.models import LeNet5  # noqa: E402


@st.composite
def layer_problems(draw):
    problems = []
    for _ in range(draw(st.integers(1, 4))):
        shape = tuple(draw(st.integers(2, 8)) for _ in range(draw(st.integers(2, 3))))
        high = tuple(draw(st.integers(1, n)) for n in shape)
        low = tuple(draw(st.integers(1, h)) for h in high)
        spectra = [
            np.sort(
                np.asarray(draw(st.lists(st.floats(1e-4, 5.0), min_size=h, max_size=h)))
            )[::-1]
            for h in high
        ]
        norm = float(np.sqrt(np.sum(spectra[0] ** 2)))
        problems.append(
            {
                "spectra": spectra,
                "shape": shape,
                "min_rank": low,
                "max_rank": high,
                "norm": norm,
            }
        )
    return problems


@settings(max_examples=150)
@given(
    problems=layer_problems(),
    fraction=st.floats(0, 1),
    criterion=st.sampled_from(GLOBAL_CRITERIA),
)
def test_allocation_fits_and_respects_bounds(problems, fraction, criterion):
    smallest = sum(parameter_count(p["shape"], p["min_rank"]) for p in problems)
    largest = sum(parameter_count(p["shape"], p["max_rank"]) for p in problems)
    budget = int(smallest + fraction * (largest - smallest))
    ranks = ranks_from_global_budget(problems, budget, criterion=criterion)
    assert (
        sum(parameter_count(p["shape"], r) for p, r in zip(problems, ranks)) <= budget
    )
    for p, r in zip(problems, ranks):
        assert all(lo <= x <= hi for lo, x, hi in zip(p["min_rank"], r, p["max_rank"]))
    assert ranks == ranks_from_global_budget(problems, budget, criterion=criterion)
    # a budget that holds everything keeps everything
    assert ranks_from_global_budget(problems, largest, criterion=criterion) == [
        p["max_rank"] for p in problems
    ]


def test_allocation_rejects_an_impossible_budget():
    problem = {
        "spectra": [np.ones(3), np.ones(3)],
        "shape": (4, 4),
        "min_rank": (2, 2),
        "max_rank": (3, 3),
        "norm": 1.0,
    }
    with pytest.raises(ValueError, match="budget=10 is smaller than 20"):
        ranks_from_global_budget([problem], 10)
    with pytest.raises(ValueError, match="criterion must be one of"):
        ranks_from_global_budget([problem], 30, criterion="greedy")


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        TuckerConv2d(3, 16, 3, padding=1, rank=(6, 3, 3, 3), dtype=torch.float64),
        nn.ReLU(),
        nn.Flatten(),
        TuckerLinear(16 * 36, 20, rank=8, dtype=torch.float64),
        nn.ReLU(),
        TuckerLinear(20, 5, rank=4, min_rank=2, dtype=torch.float64),
    )


def _train(model, optimizer, steps=8, seed=1):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 3, 6, 6, generator=generator, dtype=torch.float64)
        y = torch.randint(0, 5, (16,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        yield


@pytest.mark.parametrize("criterion", GLOBAL_CRITERIA)
@pytest.mark.parametrize("budget", [800, 2000, 5000])
def test_the_budget_is_never_exceeded(criterion, budget):
    model = _model()
    optimizer = TDLRT(
        model, lr=0.2, momentum=0.9, budget=budget, budget_criterion=criterion
    )
    layers = [m for m in model.modules() if isinstance(m, TuckerLayer)]
    for _ in _train(model, optimizer):
        assert compression_report(model).compressed <= budget
        for layer in layers:
            assert all(
                lo <= r <= hi
                for lo, r, hi in zip(layer.min_rank, layer.rank, layer.max_rank)
            )


def test_a_budget_of_the_full_size_is_tol_zero():
    full = sum(
        m.dense_parameter_count() * 2
        for m in _model().modules()
        if isinstance(m, TuckerLayer)
    )
    big, exact = _model(), _model()
    a = TDLRT(big, lr=0.1, budget=full)
    b = TDLRT(exact, lr=0.1, tol=0.0)
    for _ in zip(_train(big, a, steps=4), _train(exact, b, steps=4)):
        pass
    for x, y in zip(big.modules(), exact.modules()):
        if isinstance(x, TuckerLayer):
            assert x.rank == y.rank
            torch.testing.assert_close(x.weight, y.weight, atol=1e-12, rtol=0)


def test_budget_is_deterministic_and_checked():
    ranks = []
    for _ in range(2):
        model = _model()
        optimizer = TDLRT(model, lr=0.2, budget=1500)
        for _ in _train(model, optimizer):
            pass
        ranks.append([m.rank for m in model.modules() if isinstance(m, TuckerLayer)])
    assert ranks[0] == ranks[1]
    with pytest.raises(ValueError, match="budget=100 is smaller than"):
        TDLRT(_model(), lr=0.1, budget=100)
    with pytest.raises(ValueError, match=r"give tol .* or budget"):
        TDLRT(_model(), lr=0.1, budget=1000, tol=0.1)


def test_tuckerize_with_a_budget():
    torch.manual_seed(0)
    model = tuckerize(LeNet5(), init="random", budget=21_500)
    report = compression_report(model)
    assert report.compressed <= 21_500 and report.compression > 0.94


def test_a_budget_schedule_is_followed_and_checkpointed():
    from tuckerflow.nn import linear_budget

    model = _model()
    start = compression_report(model).compressed
    schedule = linear_budget(start, 900, 5)
    assert schedule(0) == start and schedule(5) == schedule(50) == 900
    optimizer = TDLRT(model, lr=0.2, budget=schedule)
    for step, _ in enumerate(_train(model, optimizer, steps=7)):
        assert compression_report(model).compressed <= schedule(step)
    state = optimizer.state_dict()
    assert state["tdlrt_steps"] == 7
    fresh = TDLRT(_model(), lr=0.2, budget=schedule)
    fresh.load_state_dict(state)
    assert fresh._budget_now() == 900
    with pytest.raises(ValueError, match="start, end and steps must be positive"):
        linear_budget(100, 0, 5)
