"""The soft hinge's backward ``g * (1 - tanh^2(z))``: two ways to compute it, their speed and accuracy.

* ``tanh``: ``tanh_backward(g, tanh(z))`` = ``g * (1 - t^2)``, ``t = tanh(z)`` (two kernels; the package
  until 2026-12-05);
* ``sigmoid``: ``g * 4y(1 - y)``, ``y = sigmoid(-2|z|)`` (five passes; the package since).

Equal in exact arithmetic. Accuracy: the relative error of each against ``1 - tanh^2(z)`` computed in
float64, at float32, over bands of ``|z|``. Speed: per call, on the unit tensors of resnet18 (batch 32,
64x64: 32x64x32x32 down to 32x512x2x2) and in total over the 17 units of one step, both forms measured
alternately in one process, median of ``--repeats``.

    OMP_NUM_THREADS=1 python benchmarks/soft_hinge.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lightning_ftprop.rules import get_rule


def tanh_form(g: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.tanh_backward(g, torch.tanh(z))


def sigmoid_form(g: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return get_rule("soft_hinge").fused(g, z)


# resnet18 at batch 32, 64x64: the stem unit, then 4 units per stage (channels double, sides halve)
RESNET18_UNITS = [(32, 64, 32, 32)] + [(32, 64 * 2**s, 16 // 2**s, 16 // 2**s) for s in range(4) for _ in range(4)]


def accuracy() -> None:
    print("## relative error against float64, float32 inputs (max over the band)")
    print("| abs(z) in | tanh form | sigmoid form | tanh form exactly 0 |")
    print("|---|---|---|---|")
    for lo, hi in ((0, 1), (1, 4), (4, 8), (8, 9), (9, 12)):
        z = torch.linspace(lo, hi, 200_001)[1:]
        z = torch.cat([z, -z])
        truth = 1 - torch.tanh(z.double()) ** 2
        g = torch.ones_like(z)
        errors = []
        for form in (tanh_form, sigmoid_form):
            got = form(g, z).double()
            errors.append(float(((got - truth).abs() / truth).max()))
        zeros = int((tanh_form(g, z) == 0).sum())
        print(f"| ({lo}, {hi}] | {errors[0]:.2e} | {errors[1]:.2e} | {zeros / z.numel():.0%} |")


def speed(repeats: int) -> None:
    print(f"\n## time per call (us), {torch.get_num_threads()} thread(s), median of {repeats}")
    print("| tensor | tanh form | sigmoid form | sigmoid / tanh |")
    print("|---|---|---|---|")
    total = {tanh_form: 0.0, sigmoid_form: 0.0}
    gen = torch.Generator().manual_seed(0)
    for shape in sorted(set(RESNET18_UNITS), key=lambda s: -s[1] * s[2] * s[3]):
        z, g = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
        times = {tanh_form: [], sigmoid_form: []}
        for _ in range(repeats):
            for form in times:
                start = time.perf_counter()
                form(g, z)
                times[form].append(time.perf_counter() - start)
        med = {form: statistics.median(t) for form, t in times.items()}
        for form in total:
            total[form] += med[form] * RESNET18_UNITS.count(shape)
        print(
            f"| {'x'.join(map(str, shape))} | {1e6 * med[tanh_form]:.0f} | {1e6 * med[sigmoid_form]:.0f} | "
            f"{med[sigmoid_form] / med[tanh_form]:.2f}x |"
        )
    print(
        f"| **one resnet18 step (17 units)** | {1e3 * total[tanh_form]:.2f} ms | {1e3 * total[sigmoid_form]:.2f} ms | "
        f"{total[sigmoid_form] / total[tanh_form]:.2f}x |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    print(f"# torch {torch.__version__}")
    accuracy()
    speed(args.repeats)


if __name__ == "__main__":
    main()
