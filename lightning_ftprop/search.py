"""Full FTPROP (Algorithm 1 of Friesen & Domingos, 2018): search for feasible hidden targets.

    from lightning_ftprop import search
    result = search.fit(X, y, hidden_sizes=[4, 4], seed=0)   # y in {-1, +1} (or {0, 1})
    result.feasible, result.train_accuracy, result.model(torch.as_tensor(X, dtype=torch.float32))

The network has layer sizes ``n_0 -> n_1 -> ... -> n_L = 1`` and sign units everywhere:

    H_0 = X,    H_d = sign(W_d H_{d-1} + b_d)  (d = 1..L),    sign(z) = +1 if z > 0 else -1

**Convex part.** With the hidden targets ``T_1 .. T_{L-1}`` in {-1, +1} fixed (``T_0 = X``,
``T_L = y``), unit ``j`` of layer ``d`` is an independent perceptron that must map the rows
``a_i`` of ``T_{d-1}`` to the column ``t = T_d[:, j]``:

1. SVM fit (squared hinge, L2; a damped Newton solver, :func:`_svm`):
   ``min_{w,b} sum_i v_i max(0, 1 - t_i (w . a_i + b))^2 + reg/2 |w|^2`` with ``v_i = 1/m``.
2. Separability, decided exactly: if the SVM already has ``t_i z_i > 0`` for all ``i`` it is a
   separating witness; if two equal rows of ``T_{d-1}`` have different targets, nothing separates
   them; otherwise the LP ``find (w, b) s.t. t_i (w . a_i + b) >= 1 for all i`` is solved with
   :func:`scipy.optimize.linprog` (HiGHS); infeasible means not separable.
   A separable unit gets weights with every margin ``t_i z_i >= 1`` (the witness rescaled, or the
   LP point), so ``sign(z) = t`` exactly, also in float32; its loss is 0. A non-separable unit
   keeps the SVM weights.

The layer loss is ``L_d = sum_ij h(T_d[i,j] z_ij)`` with ``h(u) = max(0, 1 - u)^2``.

**Combinatorial part: ``ftprop(d)``** (Algorithm 1) for the targets ``T_{d-1}`` and ``T_d``:

1. fit every unit of layer ``d``; if all are separable, succeed;
2. if ``d == 1``, fail (``T_0 = X`` cannot change);
3. otherwise, while the patience (``d < L``) and the global budget last, make a *target proposal*
   for ``T_{d-1}`` from the flip scores (the exact change of ``L_d`` under the current fit)

       delta_ik = sum_j h(t_ij (z_ij - 2 W_jk T_{d-1}[i,k])) - h(t_ij z_ij)

   trying, best first: for each unit ``k`` (largest total gain ``sum_i min(delta_ik, 0)`` first)
   the column that unit ``k`` can realise from ``T_{d-2}`` closest to the improving flips (an SVM
   fit to ``-sign(delta_ik) T_{d-1}[i,k]`` with weights ``v_i = |delta_ik| + 1e-3``); then every
   single flip with ``delta_ik < 0``, most negative first (ties broken by the seeded RNG).
   Each proposal recurses: ``ftprop(d-1)`` tries to make layer ``d-1`` produce it; if it cannot,
   it returns what layer ``d-1`` does produce after its own search (so the network always equals
   its targets). Layer ``d`` is re-fitted on the result, which is accepted if ``L_d`` went down;
   succeed as soon as layer ``d`` is feasible;
4. fail when no proposal lowers ``L_d`` (a local minimum) or the patience runs out; on failure
   ``T_d`` (``d < L``) is replaced by the layer's actual outputs ``sign(W_d T_{d-1} + b_d)``.

Every accepted step lowers the loss of the layer that made it, so a call cannot cycle.

**Restarts.** The search starts from random weights (each unit a hyperplane with a Gaussian normal
through a random row of its input) with hidden targets equal to that network's activations. After
each local minimum of ``ftprop(L)`` one random hidden unit is redrawn the same way (a *kick*), the
activations above it are recomputed, and ``ftprop(L)`` runs again. This repeats until the output
layer is feasible or ``budget`` proposals (all layers, kicks included) are spent; the model with the
fewest training errors is returned. Everything is deterministic given ``seed``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from lightning_ftprop.nn import Sign

try:
    from scipy.optimize import linprog
except ImportError as err:  # scipy is the optional "search" extra
    raise ImportError(
        "lightning_ftprop.search needs scipy for its LP feasibility test; install it with "
        "pip install 'lightning-ftprop[search]' (or pip install scipy)"
    ) from err

__all__ = ["fit", "SearchResult", "LayerLog", "SOLVERS"]

#: The scipy HiGHS methods the linear-separability test may use.
SOLVERS: Tuple[str, ...] = ("highs", "highs-ds", "highs-ipm")
"""``linprog`` methods for the separability LP: HiGHS choosing itself, dual simplex, interior point."""

Params = List[Tuple[np.ndarray, np.ndarray]]  # [(W_d, b_d)] for d = 1..L


@dataclass
class LayerLog:
    """What the search did at one layer (``layer`` is 1-based; ``layer == L`` is the output unit).

    Example:
        >>> import numpy as np
        >>> result = fit(np.array([[0.0], [1.0]]), np.array([-1, 1]), hidden_sizes=[2])
        >>> first = result.log[0]
        >>> first.layer, first.units
        (1, 2)
    """

    layer: int
    units: int
    unit_fits: int = 0  #: distinct unit problems solved (an SVM fit, plus the LP when needed)
    separable: int = 0  #: how many of those were linearly separable
    lp_solves: int = 0  #: separability LPs run (an SVM that separates needs none)
    proposals: int = 0  #: target proposals this layer made for the layer below
    accepted: int = 0  #: proposals accepted because they lowered this layer's loss
    errors: int = 0  #: in the returned model, outputs of this layer that differ from its targets


@dataclass
class SearchResult:
    """The outcome of :func:`fit`.

    ``model`` maps a float32 ``(m, n_0)`` tensor to ``(m, 1)`` predictions in {-1, +1}.
    ``feasible`` is True iff the search found targets that make every layer separable, i.e. the
    model fits every training label. ``train_accuracy`` is measured by running ``model`` on ``X``.

    Example:
        >>> import numpy as np
        >>> result = fit(np.array([[0.0], [1.0]]), np.array([-1, 1]), hidden_sizes=[1])
        >>> isinstance(result, SearchResult), result.feasible, len(result.log)  # one log per layer
        (True, True, 2)
    """

    model: nn.Sequential
    feasible: bool
    train_accuracy: float
    log: List[LayerLog]
    proposals: int  #: target proposals used, kicks included (at most ``budget``)
    kicks: int  #: random hidden-unit redraws after local minima
    seconds: float = 0.0
    targets: List[np.ndarray] = field(default_factory=list, repr=False)  #: T_1 .. T_L of ``model``


# --- input validation --------------------------------------------------------------------------------


def _as_array(a) -> np.ndarray:
    return np.asarray(a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a)


def _is_pos_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1


def _check_inputs(X, y, hidden_sizes, budget, patience, solver, reg) -> Tuple[np.ndarray, np.ndarray, List[int]]:
    X = _as_array(X).astype(np.float64)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"X must be a non-empty 2-D array (samples, features), got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError("X contains NaN or inf; only finite values are allowed")
    y = _as_array(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ValueError(f"y must have shape ({X.shape[0]},) to match X of shape {X.shape}, got shape {y.shape}")
    values = sorted(set(np.unique(y).tolist()))
    if set(values) <= {-1, 1}:
        y = y.astype(np.float64)
    elif set(values) <= {0, 1}:
        y = np.where(y == 1, 1.0, -1.0)
    else:
        raise ValueError(f"labels must all lie in {{-1, +1}} or all in {{0, 1}}, got values {values}")
    if isinstance(hidden_sizes, (int, str)) or not hasattr(hidden_sizes, "__len__") or len(hidden_sizes) == 0:
        raise ValueError(f"hidden_sizes must be a non-empty sequence of positive ints, got {hidden_sizes!r}")
    for h in hidden_sizes:
        if not _is_pos_int(h):
            raise ValueError(f"hidden_sizes must contain only positive ints, got {h!r} in {list(hidden_sizes)}")
    for name, value in (("budget", budget), ("patience", patience)):
        if not _is_pos_int(value):
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; allowed solvers are: {', '.join(SOLVERS)}")
    if isinstance(reg, bool) or not isinstance(reg, (int, float)) or not reg > 0:
        raise ValueError(f"reg must be a float > 0, got {reg!r}")
    return X, y, [int(h) for h in hidden_sizes]


# --- the convex part: one perceptron per unit ------------------------------------------------------


def _loss(u: np.ndarray) -> np.ndarray:
    """The per-entry layer loss ``h(u) = max(0, 1 - u)^2`` of a margin ``u = t * z``."""
    h = np.maximum(0.0, 1.0 - u)
    return h * h


def _svm(A1: np.ndarray, v: np.ndarray, reg: float, iters: int = 100) -> np.ndarray:
    """``argmin_x f(x) = sum_i v_i max(0, 1 - A1_i . x)^2 + reg/2 |x[:-1]|^2`` (last entry: bias).

    ``f`` is convex and piecewise quadratic. Each step solves the Newton system on the active set
    ``S = {i : A1_i . x < 1}``, ``(2 A1_S^T V_S A1_S + R) s = grad f``, then backtracks until
    ``f`` decreases enough (Armijo); it stops when ``|grad f|_inf < 1e-10`` or ``f`` stalls.
    """
    R = np.full(A1.shape[1], reg)
    R[-1] = 1e-9  # the bias is (almost) unpenalised; the tiny term keeps the system invertible
    x = np.zeros(A1.shape[1])

    def f(x):
        u = np.maximum(0.0, 1.0 - A1 @ x)
        return float(v @ (u * u) + 0.5 * (R * x) @ x), u

    fx, u = f(x)
    for _ in range(iters):
        S = u > 0
        g = -2.0 * (v[S] * u[S]) @ A1[S] + R * x
        if np.abs(g).max() < 1e-10:
            break
        step = np.linalg.solve(2.0 * (A1[S].T * v[S]) @ A1[S] + np.diag(R), g)
        lr = 1.0
        while True:
            f_new, u_new = f(x - lr * step)
            if f_new <= fx - 1e-4 * lr * (g @ step) or lr < 1e-8:
                break
            lr *= 0.5
        x, stalled = x - lr * step, fx - f_new < 1e-14
        fx, u = f_new, u_new
        if stalled:
            break
    return x


def _conflict(A: np.ndarray, t: np.ndarray) -> bool:
    """True if two equal rows of ``A`` have different targets (then no hyperplane separates ``t``)."""
    _, group = np.unique(A, axis=0, return_inverse=True)
    group = group.ravel()
    lo = np.full(group.max() + 1, np.inf)
    hi = np.full(group.max() + 1, -np.inf)
    np.minimum.at(lo, group, t)
    np.maximum.at(hi, group, t)
    return bool(np.any(lo != hi))


class _Search:
    """The state of one run: data, RNG, budget, logs and a cache of unit fits."""

    def __init__(self, X, y, sizes, budget, patience, solver, reg, seed):
        self.X, self.y, self.sizes = X, y[:, None], sizes  # sizes = [n_0, n_1, ..., n_L = 1]
        self.L = len(sizes) - 1
        self.budget, self.patience, self.solver, self.reg = budget, patience, solver, reg
        self.rng = np.random.default_rng(seed)
        self.used = 0
        self.log = [LayerLog(layer=d, units=sizes[d]) for d in range(1, self.L + 1)]
        self._cache: Dict[bytes, Tuple[np.ndarray, bool]] = {}

    def svm(self, A: np.ndarray, t: np.ndarray, v: np.ndarray) -> np.ndarray:
        return _svm(np.hstack([A, np.ones((A.shape[0], 1))]) * t[:, None], v, self.reg)

    def fit_unit(self, d: int, A: np.ndarray, t: np.ndarray) -> Tuple[np.ndarray, bool]:
        """``(w, b)`` as one vector, and whether ``t`` is linearly separable from the rows of ``A``."""
        key = hashlib.blake2b(bytes([d]) + (A.tobytes() if d > 1 else b"") + t.tobytes(), digest_size=16).digest()
        if key not in self._cache:
            log = self.log[d - 1]
            log.unit_fits += 1
            m = A.shape[0]
            A1 = np.hstack([A, np.ones((m, 1))]) * t[:, None]  # rows t_i [a_i, 1]
            x = _svm(A1, np.full(m, 1.0 / m), self.reg)
            margin = float(np.min(A1 @ x))
            if margin > 1e-9:  # the SVM separates: rescale it to margins >= 1
                out = (x / min(margin, 1.0), True)
            elif d > 1 and _conflict(A, t):  # equal rows, different targets: not separable
                out = (x, False)
            else:
                log.lp_solves += 1
                res = linprog(
                    np.zeros(A1.shape[1]), A_ub=-A1, b_ub=-np.ones(m), bounds=(None, None), method=self.solver
                )
                lp_margin = float(np.min(A1 @ res.x)) if res.status == 0 else 0.0
                if res.status == 0 and lp_margin > 0:
                    out = (res.x / min(1.0, lp_margin), True)
                elif res.status == 2:
                    out = (x, False)
                else:
                    raise RuntimeError(f"separability LP failed at layer {d}: {res.message}")
            log.separable += out[1]
            self._cache[key] = out
        return self._cache[key]

    def fit_layer(self, d: int, A: np.ndarray, T: np.ndarray) -> Tuple[np.ndarray, np.ndarray, bool, float]:
        """Fit every unit of layer ``d``: ``W (n_d, n_{d-1})``, ``b``, all separable?, loss ``L_d``."""
        fits = [self.fit_unit(d, A, np.ascontiguousarray(T[:, j])) for j in range(T.shape[1])]
        Wb = np.stack([x for x, _ in fits])
        W, b = Wb[:, :-1], Wb[:, -1]
        return W, b, all(ok for _, ok in fits), float(_loss(T * (A @ W.T + b)).sum())

    # --- the combinatorial part: Algorithm 1 -------------------------------------------------------

    def proposals(self, d: int, T: List[np.ndarray], W: np.ndarray, b: np.ndarray) -> Iterator[Tuple[int, np.ndarray]]:
        """New columns ``(k, T_{d-1}[:, k])`` that would lower ``L_d``, best first (module doc, step 3)."""
        A, Td = T[d - 1], T[d]
        Z = A @ W.T + b  # (m, n_d)
        Zf = Z[:, None, :] - 2.0 * A[:, :, None] * W.T[None, :, :]  # z after flipping A[i, k]
        delta = _loss(Td[:, None, :] * Zf).sum(2) - _loss(Td * Z).sum(1)[:, None]  # (m, n_{d-1})
        gain = np.minimum(delta, 0).sum(0)
        for k in np.lexsort((self.rng.random(gain.size), gain)):
            if gain[k] < -1e-9:
                want = np.where(delta[:, k] < -1e-9, -A[:, k], A[:, k])
                x = self.svm(T[d - 2], want, np.abs(delta[:, k]) + 1e-3)
                col = np.where(T[d - 2] @ x[:-1] + x[-1] > 0, 1.0, -1.0)
                if not np.array_equal(col, A[:, k]):
                    yield k, col
        i, k = np.nonzero(delta < -1e-9)
        for j in np.lexsort((self.rng.random(i.size), delta[i, k])):
            col = A[:, k[j]].copy()
            col[i[j]] *= -1
            yield k[j], col

    def _fail(self, d: int, T: List[np.ndarray], P: Params):
        """Report failure; below the top, the layer's targets become its actual outputs."""
        if d < self.L:
            W, b = P[d - 1]
            T = list(T)
            T[d] = np.where(T[d - 1] @ W.T + b > 0, 1.0, -1.0)
        return False, T, P

    def ftprop(self, d: int, T: List[np.ndarray], P: Params, patience: Optional[int]):
        """Make layer ``d`` map ``T[d-1]`` to ``T[d]``, changing ``T[1..d-1]`` if needed: ``(ok, T, P)``."""
        W, b, ok, loss = self.fit_layer(d, T[d - 1], T[d])
        P = P[: d - 1] + [(W, b)] + P[d:]
        if ok:
            return True, T, P
        if d == 1:
            return self._fail(d, T, P)
        log, tries, progressed = self.log[d - 1], 0, True
        while progressed:
            progressed = False
            for k, col in self.proposals(d, T, W, b):
                if self.used >= self.budget or (patience is not None and tries >= patience):
                    return self._fail(d, T, P)
                tries, self.used, log.proposals = tries + 1, self.used + 1, log.proposals + 1
                T2 = list(T)
                T2[d - 1] = T[d - 1].copy()
                T2[d - 1][:, k] = col
                _, T2, P2 = self.ftprop(d - 1, T2, P, self.patience)
                W2, b2, ok2, loss2 = self.fit_layer(d, T2[d - 1], T[d])
                if ok2 or loss2 < loss - 1e-9:
                    log.accepted += 1
                    T, P, W, b, loss = T2, P2[: d - 1] + [(W2, b2)] + P2[d:], W2, b2, loss2
                    if ok2:
                        return True, T, P
                    progressed = True
                    break
        return self._fail(d, T, P)

    # --- restarts ----------------------------------------------------------------------------------

    def random_units(self, A: np.ndarray, n: int) -> Tuple[np.ndarray, np.ndarray]:
        """``n`` hyperplanes, each with a Gaussian normal, through a random row of ``A``."""
        W = self.rng.standard_normal((n, A.shape[1]))
        b = -np.einsum("jk,jk->j", W, A[self.rng.integers(0, A.shape[0], n)])
        return W, b + 0.01 * self.rng.standard_normal(n)

    def forward(self, T: List[np.ndarray], P: Params, start: int) -> List[np.ndarray]:
        """Recompute the hidden targets ``T[start..L-1]`` as the activations of the weights ``P``."""
        T = list(T)
        for d in range(start, self.L):
            W, b = P[d - 1]
            T[d] = np.where(T[d - 1] @ W.T + b > 0, 1.0, -1.0)
        return T

    def start(self) -> Tuple[List[np.ndarray], Params]:
        """Random weights; hidden targets are that network's activations."""
        T, P = [self.X], []
        for d in range(1, self.L + 1):
            W, b = self.random_units(T[d - 1], self.sizes[d])
            P.append((W, b))
            T.append(self.y if d == self.L else np.where(T[d - 1] @ W.T + b > 0, 1.0, -1.0))
        return T, P

    def kick(self, T: List[np.ndarray], P: Params) -> Tuple[List[np.ndarray], Params]:
        """Redraw one random hidden unit and recompute the activations above it (one proposal)."""
        self.used += 1
        d = int(self.rng.integers(1, self.L))
        k = int(self.rng.integers(0, self.sizes[d]))
        w, b = self.random_units(T[d - 1], 1)
        W, B = P[d - 1][0].copy(), P[d - 1][1].copy()
        W[k], B[k] = w[0], b[0]
        P = P[: d - 1] + [(W, B)] + P[d:]
        return self.forward(T, P, d), P


# --- the public entry point ------------------------------------------------------------------------


def _to_model(P: Params, sizes: List[int]) -> nn.Sequential:
    layers: List[nn.Module] = []
    for d, (W, b) in enumerate(P, start=1):
        linear = nn.Linear(sizes[d - 1], sizes[d])
        with torch.no_grad():
            linear.weight.copy_(torch.as_tensor(W, dtype=torch.float32))
            linear.bias.copy_(torch.as_tensor(b, dtype=torch.float32))
        layers += [linear, Sign()]
    return nn.Sequential(*layers)


def fit(
    X,
    y,
    hidden_sizes: Sequence[int],
    *,
    seed: int = 0,
    budget: int = 5000,
    patience: int = 5,
    solver: str = "highs",
    reg: float = 0.01,
) -> SearchResult:
    """Train a sign-unit network ``n_0 -> hidden_sizes -> 1`` by FTPROP (Algorithm 1, module doc).

    Args:
        X: ``(m, n_0)`` finite inputs (numpy array, tensor or nested lists).
        y: ``m`` labels, all in {-1, +1} or all in {0, 1} (0 is read as -1); shape ``(m,)`` or
            ``(m, 1)``. The model always predicts in {-1, +1}.
        hidden_sizes: the widths of the hidden layers, e.g. ``[4, 4]``; at least one, each >= 1.
        seed: seeds the initial weights, the kicks and the tie-breaks; same seed, same result.
        budget: the most target proposals over the whole run: every column or flip a layer proposes
            for the layer below (at any depth of the recursion) and every kick counts one. The run
            ends when the budget is spent, so it always terminates; each proposal costs a bounded
            number of convex fits (at most ``patience`` more proposals per layer below, counted too).
        patience: the most proposals a hidden layer may try in one recursive call before it returns
            its best effort to the layer above. The output layer has no patience limit: it stops at a
            local minimum (then a kick follows) or when the budget is spent.
        solver: the ``scipy.optimize.linprog`` method of the separability LP, one of ``SOLVERS``
            (``"highs"``, the default, lets HiGHS choose).
        reg: the L2 weight penalty ``reg/2 |w|^2`` of the SVM fits (> 0).

    Returns:
        A :class:`SearchResult`. When no feasible targets were found within the budget, ``model`` is
        the state with the fewest training errors and ``feasible`` is False.

    Raises:
        ValueError: for ``X`` not 2-D, ``y`` of the wrong length or with labels outside {-1, +1} and
            {0, 1}, empty or non-positive ``hidden_sizes``, ``budget``/``patience`` not positive
            ints, ``reg <= 0``, or an unknown ``solver``.

    Example:
        >>> import numpy as np, torch
        >>> X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=float)
        >>> y = np.array([-1, 1, 1, -1])  # XOR: no single sign unit separates it
        >>> result = fit(X, y, hidden_sizes=[4], seed=0)
        >>> result.feasible, result.train_accuracy
        (True, 1.0)
        >>> result.model(torch.tensor(X, dtype=torch.float32)).flatten()
        tensor([-1.,  1.,  1., -1.], grad_fn=<ViewBackward0>)
    """
    X, y, hidden = _check_inputs(X, y, hidden_sizes, budget, patience, solver, reg)
    began = time.perf_counter()
    search = _Search(X, y, [X.shape[1], *hidden, 1], budget, patience, solver, reg, seed)
    T, P = search.start()
    best, kicks = None, 0
    while True:
        ok, T, P = search.ftprop(search.L, T, P, None)
        W, b = P[-1]
        errors = int(((T[-2] @ W.T + b > 0) != (T[-1] > 0)).sum())
        if best is None or errors < best[0]:
            best = (errors, ok, T)
        if ok or search.used >= search.budget:
            break
        T, P = search.kick(T, P)
        kicks += 1
    _, ok, T = best
    P = [search.fit_layer(d, T[d - 1], T[d])[:2] for d in range(1, search.L + 1)]  # margin >= 1 where separable
    model = _to_model(P, search.sizes)
    with torch.no_grad():
        H = torch.as_tensor(X, dtype=torch.float32)
        for d in range(1, search.L + 1):
            H = model[2 * d - 1](model[2 * d - 2](H))
            search.log[d - 1].errors = int((H.numpy() != T[d]).sum())
    accuracy = float((H.numpy()[:, 0] == y).mean())
    return SearchResult(
        model=model,
        feasible=bool(ok and accuracy == 1.0),
        train_accuracy=accuracy,
        log=search.log,
        proposals=search.used,
        kicks=kicks,
        seconds=time.perf_counter() - began,
        targets=T[1:],
    )
