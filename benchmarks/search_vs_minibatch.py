"""Full FTPROP search (``lightning_ftprop.search.fit``) versus FTPROP-MB (sign units trained with Adam).

Problems (labels in {-1, +1}):

* parity-n on all 2^n points of {-1, +1}^n, for (n, hidden) = (2, [2]), (3, [3]), (4, [4, 4]);
* sklearn digits, classes 3 vs 8 (a commonly confused pair), 8x8 = 64 features scaled to [0, 1],
  split 50/50 into train and test (stratified, fixed split), hidden [8].

Methods, each over ``--seeds`` seeds:

* ``search``: ``search.fit(X, y, hidden, seed=s)`` with its defaults (budget 5000 proposals); a sign
  output unit.
* ``ftprop-mb``: ``nn.Sequential(Linear, Sign, ..., Linear)``, the hidden units
  ``lightning_ftprop.nn.Sign`` with rule ``--rule`` (soft_hinge = FTP-SH), the output a real-valued
  Linear; full-batch Adam (``--lr``) on the logistic loss ``log(1 + exp(-y f(x)))`` for a fixed
  number of epochs; predictions ``sign(f(x))`` (``f <= 0`` gives -1).

Reported: train accuracy, test accuracy (digits only), wall time per run (mean +- std), and how many
seeds reach zero training error. Run: ``python benchmarks/search_vs_minibatch.py``.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from lightning_ftprop import search
from lightning_ftprop.nn import Sign

Data = Tuple[np.ndarray, np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]


def parity(n: int) -> Data:
    X = np.array(list(itertools.product([-1.0, 1.0], repeat=n)))
    return X, np.prod(X, axis=1), None, None


def digits(a: int = 3, b: int = 8) -> Data:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    keep = np.isin(d.target, (a, b))
    X, y = d.data[keep] / 16.0, np.where(d.target[keep] == a, 1.0, -1.0)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.5, stratify=y, random_state=0)
    return Xtr, ytr, Xte, yte


def run_search(X, y, hidden, seed, args) -> Callable[[np.ndarray], np.ndarray]:
    result = search.fit(X, y, hidden, seed=seed)
    model = result.model
    return lambda A: _predict(model, A)


def run_minibatch(X, y, hidden, seed, args, epochs) -> Callable[[np.ndarray], np.ndarray]:
    torch.manual_seed(seed)
    sizes = [X.shape[1], *hidden]
    layers: List[nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), Sign(rule=args.rule)]
    model = nn.Sequential(*layers, nn.Linear(sizes[-1], 1))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    Xt, yt = torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
    for _ in range(epochs):
        opt.zero_grad()
        loss = nn.functional.softplus(-yt * model(Xt)[:, 0]).mean()
        loss.backward()
        opt.step()
    return lambda A: _predict(model, A)


def _predict(model: nn.Module, A: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        f = model(torch.as_tensor(A, dtype=torch.float32))[:, 0].numpy()
    return np.where(f > 0, 1.0, -1.0)


def _ms(values: List[float], fmt: str = "{:.3f}") -> str:
    return f"{fmt.format(np.mean(values))} ± {fmt.format(np.std(values))}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--rule", default="soft_hinge")
    parser.add_argument("--epochs-parity", type=int, default=2000)
    parser.add_argument("--epochs-digits", type=int, default=500)
    args = parser.parse_args()
    torch.set_num_threads(1)

    problems: Dict[str, Tuple[Data, List[int], int]] = {
        "parity-2 [2]": (parity(2), [2], args.epochs_parity),
        "parity-3 [3]": (parity(3), [3], args.epochs_parity),
        "parity-4 [4, 4]": (parity(4), [4, 4], args.epochs_parity),
        "digits 3 vs 8 [8]": (digits(3, 8), [8], args.epochs_digits),
    }
    print(
        f"# seeds={args.seeds}, FTPROP-MB: Adam lr={args.lr}, rule={args.rule}, full batch, logistic loss, "
        f"epochs parity={args.epochs_parity} digits={args.epochs_digits}; search: defaults "
        f"(budget=5000, patience=5, solver='highs', reg=0.01); torch threads=1; {platform.processor() or platform.machine()}"
    )
    print()
    print("| problem | m train | method | train acc | test acc | zero train error | time / run (s) |")
    print("|---|---|---|---|---|---|---|")
    for name, ((X, y, Xte, yte), hidden, epochs) in problems.items():
        methods = {
            "search (Alg. 1)": lambda s, X=X, y=y, hidden=hidden: run_search(X, y, hidden, s, args),
            "FTPROP-MB (Adam)": lambda s, X=X, y=y, hidden=hidden, epochs=epochs: run_minibatch(
                X, y, hidden, s, args, epochs
            ),
        }
        for method, train in methods.items():
            train_acc, test_acc, seconds = [], [], []
            for seed in range(args.seeds):
                began = time.perf_counter()
                predict = train(seed)
                seconds.append(time.perf_counter() - began)
                train_acc.append(float((predict(X) == y).mean()))
                if Xte is not None:
                    test_acc.append(float((predict(Xte) == yte).mean()))
            zero = sum(a == 1.0 for a in train_acc)
            test = _ms(test_acc) if test_acc else "—"
            print(
                f"| {name} | {len(y)} | {method} | {_ms(train_acc)} | {test} | {zero}/{args.seeds} | "
                f"{_ms(seconds, '{:.2f}')} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
