"""RankRule: one validated value for the six rank-rule keywords.

Its errors name the problem and the fix; every function that takes the keywords gives
the same result, to the bit, for ``rule=RankRule(...)``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorly as tl
from helpers import randn, to_np

import tuckerflow as tf
from tuckerflow import RankRule
from tuckerflow.integrators.tdlrt import tdlrt_augment_unchecked

SHAPE, RANK = (6, 5, 7), (2, 3, 3)


def _point(dtype=None):
    return tf.random_tucker(SHAPE, RANK, random_state=0, dtype=dtype)


def _same(a, b):
    """Two Tucker tensors (or a step's (tucker, state)) equal to the bit."""
    if isinstance(a, tuple) and not isinstance(a, tl.tucker_tensor.TuckerTensor):
        a, b = a[0], b[0]
    assert a.rank == b.rank
    assert np.array_equal(to_np(a.core), to_np(b.core))
    for fa, fb in zip(a.factors, b.factors, strict=True):
        assert np.array_equal(to_np(fa), to_np(fb))


# ------------------------------------------------------------------ the value itself
@pytest.mark.parametrize(
    "keywords, error, pattern",
    [
        ({"rank": 2, "tol": 0.1}, ValueError, r"give at most one of rank, tol and "),
        ({"tol": 0.1, "budget": 50}, ValueError, r"got tol and budget"),
        ({"rank": "2"}, TypeError, r"rank must be an int or a sequence of ints \(one "),
        ({"rank": (2, 2.5)}, TypeError, r"rank\[1\] must be an integer, got 2.5"),
        ({"rank": (2, 0)}, ValueError, r"rank\[1\] must be >= 1, got 0"),
        ({"rank": 0}, ValueError, r"rank must be >= 1, got 0"),
        ({"min_rank": 0}, ValueError, r"min_rank must be >= 1, got 0"),
        ({"max_rank": (1, True)}, TypeError, r"max_rank\[1\] must be an integer"),
        ({"tol": 1.0}, ValueError, r"tol must lie in \[0, 1\) when relative=True"),
        ({"tol": -1.0, "relative": False}, ValueError, r"tol must be >= 0, got -1.0"),
        ({"tol": float("inf")}, ValueError, r"tol must be finite"),
        ({"tol": "0.1"}, TypeError, r"tol must be a real number, got '0.1'"),
        ({"budget": 10.0}, TypeError, r"budget must be an int, got 10.0"),
    ],
)
def test_construction_names_the_problem(keywords, error, pattern):
    with pytest.raises(error, match=pattern):
        RankRule(**keywords)


def test_is_a_frozen_normalized_value():
    rule = RankRule(rank=[2, 3, 3])
    assert rule == RankRule(rank=(2, 3, 3)) and rule.rank == (2, 3, 3)
    assert hash(rule) == hash(RankRule(rank=(2, 3, 3)))
    absolute = RankRule(tol=1, relative=False)
    assert absolute.tol == 1.0 and isinstance(absolute.tol, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        rule.tol = 0.1
    with pytest.raises(TypeError):
        RankRule(0.1)  # keywords only: RankRule(tol=0.1)
    assert [
        RankRule(**k).kind for k in ({}, {"rank": 2}, {"tol": 0}, {"budget": 9})
    ] == [
        None,
        "rank",
        "tol",
        "budget",
    ]
    # replace re-validates
    with pytest.raises(ValueError, match="give at most one"):
        dataclasses.replace(RankRule(tol=0.1), rank=2)


@pytest.mark.parametrize(
    "rule, dims, kwargs, pattern",
    [
        (RankRule(rank=(2, 2)), SHAPE, {}, r"rank must have one entry per mode \(3\)"),
        (
            RankRule(rank=(2, 9, 2)),
            SHAPE,
            {},
            r"rank\[1\]=9 exceeds the mode size 5 of mode 1.*ask for rank\[1\] <= 5",
        ),
        (
            RankRule(rank=(2, 3, 7)),
            (4, 5, 6),
            {"augmented_from": (2, 3, 3)},
            r"rank\[2\]=7 exceeds the augmented rank 6 of mode 2.*ask for rank\[2\] "
            r"<= 6 in this step",
        ),
        (
            RankRule(tol=0.1, max_rank=(2, 2, 8)),
            SHAPE,
            {},
            r"max_rank\[2\]=8 exceeds the mode size 7",
        ),
        (RankRule(tol=0.1, min_rank=4, max_rank=3), SHAPE, {}, r"min_rank 4 exceeds"),
        (
            RankRule(budget=10),
            SHAPE,
            {},
            r"budget=10 is smaller than 19, the parameter count of the smallest",
        ),
    ],
)
def test_check_against_a_shape_names_the_fix(rule, dims, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        rule.check(dims, SHAPE, **kwargs)


def test_check_returns_the_rule():
    rule = RankRule(tol=0.1, min_rank=(1, 1, 2))
    assert rule.check(SHAPE, SHAPE) is rule


def test_choose_applies_each_kind():
    spectra = [np.array([3.0, 2.0, 0.1]), np.array([3.0, 0.1, 0.01])]
    dims = shape = (3, 3)
    assert RankRule().choose(spectra, dims, shape) == (3, 3)
    assert RankRule(rank=2).choose(spectra, dims, shape) == (2, 2)
    assert RankRule(tol=0.05).choose(spectra, dims, shape) == (2, 1)
    assert RankRule(tol=0.05, min_rank=2).choose(spectra, dims, shape) == (2, 2)
    assert RankRule(budget=13).choose(spectra, dims, shape) == (2, 1)
    assert RankRule(min_rank=(3, 3)).pinned(dims, shape) == [True, True]


# ------------------------------------------------------------------ rule= or keywords
def test_rule_and_keywords_together_is_an_error():
    with pytest.raises(ValueError, match=r"either as rule=RankRule\(...\) or as "):
        tf.hosvd(_point().to_tensor(), tol=0.1, rule=RankRule(tol=0.1))
    with pytest.raises(ValueError, match=r"got rule and min_rank, budget; move"):
        tf.truncate(_point(), rule=RankRule(), min_rank=2, budget=40)
    with pytest.raises(
        TypeError, match=r"rule must be a tuckerflow.RankRule, got dict"
    ):
        tf.truncate(_point(), rule={"tol": 0.1})


def test_steps_still_ask_for_a_rule():
    point = _point()
    grad = randn(SHAPE, seed=1, dtype=None)
    with pytest.raises(ValueError, match="give one of tol"):
        tf.tdlrt_step(point, grad, 0.1, rule=RankRule(max_rank=3))


KEYWORD_RULES = [
    {"tol": 0.2},
    {"tol": 0.5, "relative": False, "min_rank": (1, 2, 1), "max_rank": 4},
    {"rank": (3, 2, 4)},
    {"budget": 90, "max_rank": (5, 5, 5)},
]


@pytest.mark.parametrize("keywords", KEYWORD_RULES)
def test_hosvd_and_truncate_agree(backend, dtype, keywords):
    point = _point(dtype)
    dense = point.to_tensor() + 0.1 * randn(SHAPE, seed=2, dtype=dtype)
    rule = RankRule(**keywords)
    _same(tf.hosvd(dense, **keywords), tf.hosvd(dense, rule=rule))
    if "rank" in keywords:  # truncation cannot raise the rank (3, 2, 4) above (2, 3, 3)
        keywords, rule = {"rank": (2, 2, 3)}, RankRule(rank=(2, 2, 3))
    _same(tf.truncate(point, **keywords), tf.truncate(point, rule=rule))


@pytest.mark.parametrize("keywords", KEYWORD_RULES)
def test_steps_agree(backend, dtype, keywords):
    point = _point(dtype)
    grad = randn(SHAPE, seed=3, dtype=dtype)
    rule = RankRule(**keywords)
    _same(
        tf.tdlrt_step(point, grad, 0.1, **keywords),
        tf.tdlrt_step(point, grad, 0.1, rule=rule),
    )
    state = tf.Adam.init(point)
    _same(
        tf.tdlrt_step(point, grad, 0.1, state=state, **keywords),
        tf.tdlrt_step(point, grad, 0.1, state=state, rule=rule),
    )
    _same(
        tf.parallel_bug_step(point, grad, 0.1, **keywords),
        tf.parallel_bug_step(point, grad, 0.1, rule=rule),
    )
    augmented = tdlrt_augment_unchecked(point.core, list(point.factors), grad, 0.1)
    _same(augmented.finish(**keywords), augmented.finish(rule=rule))
    if "rank" not in keywords:
        assert augmented.select(**keywords) == augmented.select(rule=rule)


@pytest.mark.parametrize(
    "keywords", [{}, {"tol": 0.2}, {"rank": (3, 4, 2)}, {"tol": 0.3, "max_rank": 3}]
)
def test_retraction_and_rgd_agree(backend, keywords):
    point = _point()
    tangent = 0.3 * tf.random_tangent(point, random_state=4)
    rule = RankRule(**keywords)
    _same(tf.retract(point, tangent, **keywords), tf.retract(point, tangent, rule=rule))
    grad = randn(SHAPE, seed=5, dtype=None)
    _same(
        tf.rgd_step(point, grad, 0.1, **keywords),
        tf.rgd_step(point, grad, 0.1, rule=rule),
    )


def test_rgd_factors_retraction_rejects_a_budget():
    with pytest.raises(ValueError, match="keeps the rank: tol/budget/rank"):
        tf.rgd_step(
            _point(),
            randn(SHAPE, seed=5, dtype=None),
            0.1,
            retraction="factors",
            rule=RankRule(budget=100),
        )


def _objective(target):
    def objective(W):
        return 0.5 * float(tl.sum((W - target) ** 2)), W - target

    return objective


@pytest.mark.parametrize(
    "method, options",
    [
        ("tdlrt", {"lr": 0.5}),
        ("parallel_bug", {"lr": 0.5}),
        ("rgd", {"line_search": "armijo"}),
        ("rcg", {}),
    ],
)
def test_integrate_agrees(method, options):
    target = tf.random_tucker(SHAPE, (3, 3, 3), random_state=6).to_tensor()
    start = tf.random_tucker(SHAPE, (1, 1, 1), random_state=7)
    run = dict(method=method, steps=4, **options)
    by_keywords = tf.integrate(_objective(target), start, tol=1e-3, max_rank=4, **run)
    by_rule = tf.integrate(
        _objective(target), start, rule=RankRule(tol=1e-3, max_rank=4), **run
    )
    assert by_keywords.history.ranks == by_rule.history.ranks
    assert by_keywords.history.loss == by_rule.history.loss
    _same(by_keywords.tucker, by_rule.tucker)


def test_integrate_rejects_a_rule_for_fixed_rank_methods():
    with pytest.raises(ValueError, match="keeps a fixed rank: rule does not apply"):
        tf.integrate(
            _objective(_point().to_tensor()),
            _point(),
            method="vanilla",
            lr=0.1,
            steps=1,
            rule=RankRule(tol=0.1),
        )
