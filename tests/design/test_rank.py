"""Ranking: objective costs, the weighted score, Pareto fronts (oracle and invariances), missing values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from crystalforge.design.rank import Objective, costs, pareto_fronts, rank, weighted_score

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def cost_matrices(draw, min_rows=0):
    n = draw(st.integers(min_rows, 24))
    k = draw(st.integers(1, 3))
    # small integers: many ties and duplicates, the hard cases for dominance
    return draw(arrays(np.float64, (n, k), elements=st.integers(0, 4).map(float)))


def _dominates(a, b):
    return bool(np.all(a <= b) and np.any(a < b))


def _fronts_by_definition(x):
    """Peel non-dominated sets one at a time, straight from the definition."""
    left = set(range(len(x)))
    fronts = np.zeros(len(x), dtype=np.int64)
    level = 0
    while left:
        front = {i for i in left if not any(_dominates(x[j], x[i]) for j in left)}
        for i in front:
            fronts[i] = level
        left -= front
        level += 1
    return fronts


@SETTINGS
@given(cost_matrices())
def test_fronts_match_the_definition(x):
    assert np.array_equal(pareto_fronts(x), _fronts_by_definition(x))


@SETTINGS
@given(cost_matrices(), st.randoms(use_true_random=False))
def test_fronts_are_invariant_under_permutation(x, rnd):
    perm = np.array(rnd.sample(range(len(x)), len(x)), dtype=np.int64)
    assert np.array_equal(pareto_fronts(x[perm]), pareto_fronts(x)[perm])


@SETTINGS
@given(cost_matrices())
def test_a_dominated_candidate_never_ranks_before_its_dominator(x):
    objectives = [Objective(f"c{k}") for k in range(x.shape[1])]
    ranking = rank({f"c{k}": x[:, k] for k in range(x.shape[1])}, objectives)
    for i in range(len(x)):
        for j in range(len(x)):
            if _dominates(x[i], x[j]):
                assert ranking.front[i] < ranking.front[j]
                assert ranking.position[i] < ranking.position[j]
                assert ranking.score[i] <= ranking.score[j]


@SETTINGS
@given(cost_matrices(min_rows=1), st.data())
def test_adding_a_dominated_point_keeps_the_front(x, data):
    base = x[data.draw(st.integers(0, len(x) - 1))]
    worse = base + np.array(data.draw(st.lists(st.integers(0, 2), min_size=x.shape[1], max_size=x.shape[1])))
    worse[data.draw(st.integers(0, x.shape[1] - 1))] += 1  # strictly worse somewhere: dominated by base
    before = pareto_fronts(x)
    after = pareto_fronts(np.vstack([x, worse]))
    assert np.array_equal(np.flatnonzero(after[:-1] == 0), np.flatnonzero(before == 0))
    assert after[-1] > 0


def test_objective_costs():
    values = [1.0, 2.5, 4.0, math.nan, math.inf]
    assert np.allclose(Objective("e").cost(values)[:3], [1.0, 2.5, 4.0])
    assert np.allclose(Objective("e", "max").cost(values)[:3], [-1.0, -2.5, -4.0])
    window = Objective.target("gap", 2.5, 0.5).cost(values)
    assert np.allclose(window[:3], [1.0, 0.0, 1.0])
    assert np.isnan(window[3:]).all()  # NaN and inf are missing, for every goal
    with pytest.raises(ValueError, match="window"):
        Objective("gap", "window", low=3.0, high=2.0)
    with pytest.raises(ValueError, match="goal"):
        Objective("gap", "best")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weight"):
        Objective("gap", weight=-1.0)
    with pytest.raises(ValueError, match="scale"):
        Objective("gap", scale=0.0)


def test_weighted_score_normalises_or_uses_the_scale():
    cost = np.array([[0.0, 10.0], [1.0, 30.0], [2.0, 20.0]])
    minmax = weighted_score(cost, [Objective("a"), Objective("b", weight=2.0)])
    assert np.allclose(minmax, [0.0 + 0.0, 0.5 + 2.0, 1.0 + 1.0])
    scaled = weighted_score(cost, [Objective("a", scale=0.1), Objective("b", weight=0.0)])
    assert np.allclose(scaled, [0.0, 10.0, 20.0])
    constant = weighted_score(np.array([[3.0], [3.0], [math.nan]]), [Objective("a")])
    assert np.array_equal(constant, [0.0, 0.0, math.inf])
    with pytest.raises(ValueError, match="objectives"):
        weighted_score(cost, [Objective("a")])


def test_missing_values_rank_last_and_never_crash():
    rows = [
        {"e": 0.01, "gap": 1.9},
        {"e": None, "gap": 2.5},  # missing
        {"e": 0.0, "gap": "n/a"},  # not a number
        {"e": 0.1, "gap": 9.0},
        {"gap": 2.5},  # key absent
        {"e": math.nan, "gap": 2.5},
        {"e": 0.05, "gap": 2.6},
    ]
    objectives = [Objective("e"), Objective.target("gap", 2.5, 0.5)]
    ranking = rank(rows, objectives)
    incomplete = [1, 2, 4, 5]
    assert list(ranking.complete) == [i not in incomplete for i in range(len(rows))]
    assert sorted(ranking.order[-4:]) == incomplete and list(ranking.order[-4:]) == incomplete  # table order
    assert (ranking.front[incomplete] == ranking.front.max()).all() and np.isinf(ranking.score[incomplete]).all()
    assert list(ranking.order[:3]) == [0, 6, 3]  # front {0, 6} (the score breaks the tie), then 3
    assert ranking.front[[0, 6, 3]].tolist() == [0, 0, 1]
    assert np.array_equal(ranking.position[ranking.order], np.arange(len(rows)))


def test_degenerate_tables():
    empty = rank([], [Objective("e")])
    assert empty.order.size == 0 and empty.front.size == 0
    all_missing = rank([{"e": None}, {}], [Objective("e")])
    assert list(all_missing.order) == [0, 1] and list(all_missing.front) == [0, 0]
    no_objectives = rank([{"e": 1.0}, {"e": 0.0}], [])
    assert list(no_objectives.order) == [0, 1] and list(no_objectives.front) == [0, 0]
    with pytest.raises(ValueError, match="lengths"):
        costs({"a": [1.0, 2.0], "b": [1.0]}, [Objective("a")])
    with pytest.raises(ValueError, match="by"):
        rank([], [], by="best")  # type: ignore[arg-type]


def test_rows_and_columns_rank_alike_and_score_order_ignores_fronts():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 3))
    columns = {"a": x[:, 0], "b": x[:, 1], "c": x[:, 2]}
    rows = [dict(zip("abc", map(float, r), strict=True)) for r in x]
    objectives = [Objective("a"), Objective("b", "max"), Objective.target("c", 0.0, 0.3, weight=0.5)]
    by_columns, by_rows = rank(columns, objectives), rank(rows, objectives)
    assert np.array_equal(by_columns.order, by_rows.order) and np.allclose(by_columns.score, by_rows.score)
    by_score = rank(columns, objectives, by="score")
    assert np.all(np.diff(by_score.score[by_score.order]) >= 0)
    assert np.all(np.diff(by_columns.front[by_columns.order]) >= 0)


def test_thousands_of_candidates_rank_quickly():
    import time

    x = np.random.default_rng(0).normal(size=(3000, 3))
    start = time.perf_counter()
    ranking = rank({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2]}, [Objective("a"), Objective("b"), Objective("c")])
    assert time.perf_counter() - start < 10.0  # about 0.1 s; generous for a loaded machine
    assert ranking.front.min() == 0 and len(set(ranking.order.tolist())) == 3000
