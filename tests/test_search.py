"""Tests of lightning_ftprop.search: full FTPROP (Algorithm 1) with convex per-layer solves."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from torch import nn

from lightning_ftprop import search
from lightning_ftprop.nn import Sign


def parity(n: int):
    X = np.array(list(itertools.product([-1.0, 1.0], repeat=n)))
    return X, np.prod(X, axis=1)


def predict(model: nn.Module, X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(X, dtype=torch.float32)).numpy()[:, 0]


@pytest.mark.parametrize(
    "n, hidden, seed",
    [(2, [2], 0), (2, [2], 1), (3, [3], 0), (3, [3], 1), (4, [4, 4], 0), (4, [4, 4], 1)],
)
def test_parity_is_solved_to_full_train_accuracy(n, hidden, seed):
    X, y = parity(n)
    result = search.fit(X, y, hidden, seed=seed)
    assert result.feasible
    assert result.train_accuracy == 1.0
    np.testing.assert_array_equal(predict(result.model, X), y)
    assert result.proposals <= 5000
    assert [entry.errors for entry in result.log] == [0] * (len(hidden) + 1)


def test_impossible_problem_returns_infeasible_within_budget():
    # parity-3 through a single hidden sign unit: the output is a function of one threshold of X,
    # and parity-3 is not linearly separable, so no weights exist.
    X, y = parity(3)
    result = search.fit(X, y, [1], seed=0, budget=300)
    assert not result.feasible
    assert result.train_accuracy < 1.0
    assert result.proposals == 300
    assert result.kicks > 0
    # the returned model is still a consistent network: its predictions give the reported accuracy
    assert (predict(result.model, X) == y).mean() == pytest.approx(result.train_accuracy)


def test_impossible_problem_with_default_budget_terminates():
    X, y = parity(3)
    result = search.fit(X, y, [1])
    assert not result.feasible
    assert result.proposals == 5000


def test_model_is_linear_and_sign_units_and_reproduces_every_layer_target():
    X, y = parity(4)
    result = search.fit(X, y, [4, 4], seed=0)
    kinds = [type(m) for m in result.model]
    assert kinds == [nn.Linear, Sign] * 3
    assert [m.out_features for m in result.model if isinstance(m, nn.Linear)] == [4, 4, 1]
    H = torch.as_tensor(X, dtype=torch.float32)
    with torch.no_grad():
        for d, target in enumerate(result.targets):
            z = result.model[2 * d](H)
            H = result.model[2 * d + 1](z)
            np.testing.assert_array_equal(H.numpy(), target)
            assert (z.numpy() * target).min() >= 0.99  # margins are >= 1, not merely > 0
    np.testing.assert_array_equal(result.targets[-1][:, 0], y)


def test_same_seed_gives_same_result_and_log():
    X, y = parity(3)
    a = search.fit(X, y, [3], seed=7)
    b = search.fit(X, y, [3], seed=7)
    assert a.log == b.log and a.proposals == b.proposals
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)


def test_log_counts_the_search_per_layer():
    X, y = parity(4)
    result = search.fit(X, y, [4, 4], seed=1)
    assert [(e.layer, e.units) for e in result.log] == [(1, 4), (2, 4), (3, 1)]
    assert result.log[0].proposals == 0  # layer 1 has no layer below to propose targets for
    assert sum(e.proposals for e in result.log) + result.kicks == result.proposals
    for e in result.log:
        assert 0 <= e.accepted <= e.proposals
        assert e.separable <= e.unit_fits and e.lp_solves <= e.unit_fits


def test_labels_in_zero_one_are_read_as_minus_one_plus_one():
    X, y = parity(2)
    result = search.fit(torch.as_tensor(X), torch.as_tensor((y > 0).astype(np.int64)), [2], seed=0)
    assert result.feasible
    np.testing.assert_array_equal(predict(result.model, X), y)


def test_tiny_margin_separability_is_decided_by_the_lp():
    # The L2-regularised SVM cannot afford the weight (about 2e5) needed here, so it does not separate;
    # the LP proves the unit separable and its weights give margins >= 1, exact in float32.
    X = np.array([[-1.0], [-0.5], [0.0], [1e-5]])
    y = np.array([-1, -1, -1, 1])
    result = search.fit(X, y, [1], seed=0)
    assert result.feasible
    assert result.log[0].lp_solves >= 1
    np.testing.assert_array_equal(predict(result.model, X), y)


@pytest.mark.parametrize("solver", search.SOLVERS)
def test_every_solver_solves_xor(solver):
    X, y = parity(2)
    assert search.fit(X, y, [2], seed=0, solver=solver).feasible


def test_separable_digit_pair_is_fitted_exactly():
    from sklearn.datasets import load_digits

    digits = load_digits()
    keep = np.isin(digits.target, (3, 8))
    X, y = digits.data[keep][:120], np.where(digits.target[keep][:120] == 3, 1, -1)
    result = search.fit(X, y, [4], seed=0, budget=200)
    assert result.feasible
    np.testing.assert_array_equal(predict(result.model, X), y)


def test_newton_svm_matches_a_generic_optimiser():
    rng = np.random.default_rng(0)
    A1 = rng.standard_normal((40, 6)) * rng.choice([-1.0, 1.0], (40, 1))
    v = rng.random(40)
    reg = 0.1
    x = search._svm(A1, v, reg)

    def f(x):
        u = np.maximum(0.0, 1.0 - A1 @ x)
        return v @ (u * u) + 0.5 * reg * x[:-1] @ x[:-1]

    ref = minimize(f, np.zeros(6), method="BFGS", options={"gtol": 1e-10}).x
    assert f(x) <= f(ref) + 1e-9


@pytest.mark.parametrize(
    "X, y, hidden, kwargs, match",
    [
        (np.ones(4), np.ones(4), [2], {}, r"X must be a non-empty 2-D array.*\(4,\)"),
        (np.ones((2, 2, 2)), np.ones(2), [2], {}, r"X must be a non-empty 2-D array.*\(2, 2, 2\)"),
        (np.array([[np.nan, 1.0]]), np.ones(1), [2], {}, "NaN or inf"),
        (np.ones((4, 2)), np.ones(3), [2], {}, r"y must have shape \(4,\).*got shape \(3,\)"),
        (np.ones((3, 2)), np.array([0, 1, 2]), [2], {}, r"\{-1, \+1\} or all in \{0, 1\}.*\[0, 1, 2\]"),
        (np.ones((3, 2)), np.array([-1, 0, 1]), [2], {}, r"got values \[-1, 0, 1\]"),
        (np.ones((3, 2)), np.ones(3), [], {}, r"non-empty sequence of positive ints, got \[\]"),
        (np.ones((3, 2)), np.ones(3), 3, {}, "non-empty sequence of positive ints, got 3"),
        (np.ones((3, 2)), np.ones(3), [2, 0], {}, r"only positive ints, got 0 in \[2, 0\]"),
        (np.ones((3, 2)), np.ones(3), [2.5], {}, r"only positive ints, got 2.5"),
        (
            np.ones((3, 2)),
            np.ones(3),
            [2],
            {"solver": "simplex"},
            "unknown solver 'simplex'.*highs, highs-ds, highs-ipm",
        ),
        (np.ones((3, 2)), np.ones(3), [2], {"budget": 0}, "budget must be a positive int, got 0"),
        (np.ones((3, 2)), np.ones(3), [2], {"patience": -1}, "patience must be a positive int, got -1"),
        (np.ones((3, 2)), np.ones(3), [2], {"reg": 0.0}, r"reg must be a float > 0, got 0.0"),
    ],
)
def test_bad_input_raises_value_error_naming_it(X, y, hidden, kwargs, match):
    with pytest.raises(ValueError, match=match):
        search.fit(X, y, hidden, **kwargs)
