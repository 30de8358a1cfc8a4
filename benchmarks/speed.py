"""Training-step time and memory saved for backward: threshold networks against the same network with ReLU.

For each network, every variant (ReLU, then sign and qrelu under each rule) is measured side by side in one
process. Rounds alternate over the variants so that drift in machine load hits all of them alike; the
figure per variant is the fastest round's mean step time (the round least disturbed by other work). On the
CPU the clock is this process's CPU time, which other jobs on a shared machine disturb far less than
wall time. Ratios are ReLU / variant
for throughput (above 1 is faster than ReLU) and variant / ReLU for memory.

Memory saved for backward is counted with ``torch.autograd.graph.saved_tensors_hooks`` during one forward
pass: ``unique`` counts each storage once (what is really held), ``sum`` adds every saved tensor. On a GPU,
``--device cuda`` also reports ``torch.cuda.max_memory_allocated`` per step.

    python benchmarks/speed.py                      # eager, both networks, every rule
    python benchmarks/speed.py --compile            # the same under torch.compile
    python benchmarks/speed.py --nets convnet4 --rules soft_hinge sste --rounds 7
"""

from __future__ import annotations

import argparse
import time
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F

import lightning_ftprop as ftp
from lightning_ftprop.models import get_model

NETS = {  # name -> (input shape without batch, default batch, number of classes)
    "convnet4": ((3, 32, 32), 128, 10),
    "resnet18": ((3, 64, 64), 32, 100),
}


class _NaiveSignFunction(torch.autograd.Function):
    """The textbook port, for reference: saves float z, backward g * (1 - tanh(z)^2) in four kernels."""

    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        return torch.where(z > 0, 1.0, -1.0).to(z.dtype)

    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        return g * (1 - torch.tanh(z) ** 2)


class NaiveSign(torch.nn.Module):
    def forward(self, z):
        return _NaiveSignFunction.apply(z)


def build(net: str, activation: str, rule: str, classes: int, unit_kwargs: dict) -> torch.nn.Module:
    if activation == "naive":
        model = get_model(net, activation="relu", num_classes=classes)
        ftp.convert(model, NaiveSign, mapping={torch.nn.ReLU: NaiveSign})
        return model
    kwargs = unit_kwargs if activation != "relu" else {}
    return get_model(net, activation=activation, rule=rule, num_classes=classes, **kwargs)


def saved_bytes(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Tuple[int, int]:
    """(unique, sum) bytes of the tensors autograd saves for one training step's backward."""
    storages: Dict[int, int] = {}
    total = 0

    def pack(t: torch.Tensor):
        nonlocal total
        nbytes = t.untyped_storage().nbytes()
        storages[t.untyped_storage().data_ptr()] = nbytes
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(storages.values()), total


def make_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, compiled: bool) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    fwd = torch.compile(model) if compiled else model

    def step() -> None:
        loss = F.cross_entropy(fwd(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def bench_net(net: str, variants: List[Tuple[str, str, str]], args) -> None:
    shape, batch, classes = NETS[net]
    batch = args.batch or batch
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *shape, generator=gen).to(device)
    y = torch.randint(0, classes, (batch,), generator=gen).to(device)
    steps, memory, cuda_peak = {}, {}, {}
    for name, activation, rule in variants:
        torch.manual_seed(0)
        model = build(net, activation, rule, classes, args.unit_kwargs).to(device)
        memory[name] = saved_bytes(model, x, y)
        steps[name] = make_step(model, x, y, args.compile)
        for _ in range(args.warmup):  # includes the compile
            steps[name]()
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            steps[name]()
            torch.cuda.synchronize()
            cuda_peak[name] = torch.cuda.max_memory_allocated()
    # CPU time of this process is robust to other jobs on a shared machine; a GPU needs wall time.
    clock = time.perf_counter if device.type == "cuda" or args.timer == "wall" else time.process_time
    times: Dict[str, List[float]] = {name: [] for name, _, _ in variants}
    for _ in range(args.rounds):
        for name, _, _ in variants:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = clock()
            for _ in range(args.steps):
                steps[name]()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append((clock() - start) / args.steps)
    base_t = min(times["relu"])
    base_u, base_s = memory["relu"]
    mode = "compiled" if args.compile else "eager"
    timer = "wall" if clock is time.perf_counter else "process CPU"
    print(
        f"\n## {net}, batch {batch}, input {'x'.join(map(str, shape))}, {mode}, {args.device}, "
        f"{args.rounds} rounds x {args.steps} steps, {timer} time"
    )
    header = f"{'variant':<18} {'ms/step':>8} {'throughput vs ReLU':>19} {'saved MB':>9} {'saved vs ReLU':>14} {'(sum of saved)':>15}"
    if cuda_peak:
        header += f" {'peak MB':>8} {'peak vs ReLU':>13}"
    print(header)
    for name, _, _ in variants:
        t = min(times[name])
        unique, total = memory[name]
        line = (
            f"{name:<18} {1e3 * t:8.1f} {base_t / t:18.3f}x {unique / 2**20:9.1f} {unique / base_u:13.3f}x "
            f"{total / base_s:14.3f}x"
        )
        if cuda_peak:
            line += f" {cuda_peak[name] / 2**20:8.1f} {cuda_peak[name] / cuda_peak['relu']:12.3f}x"
        print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nets", nargs="*", default=list(NETS), choices=list(NETS))
    parser.add_argument("--activations", nargs="*", default=["sign", "qrelu"], choices=["sign", "step", "qrelu"])
    parser.add_argument("--rules", nargs="*", default=ftp.available_rules())
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--timer",
        choices=["cpu", "wall"],
        default="cpu",
        help="cpu: process CPU time (default on the CPU); wall: elapsed time (always on a GPU)",
    )
    parser.add_argument(
        "--keep",
        choices=["input", "bf16", "uint8"],
        default="input",
        help="what the threshold units keep for backward",
    )
    args = parser.parse_args()
    args.unit_kwargs = {} if args.keep == "input" else {"keep": args.keep}
    if args.threads:
        torch.set_num_threads(args.threads)
    for rule in args.rules:
        ftp.get_rule(rule)
    variants = [("relu", "relu", "soft_hinge"), ("naive sign/tanh", "naive", "soft_hinge")] + [
        (f"{a}/{r}", a, r) for a in args.activations for r in args.rules
    ]
    print(
        f"# torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, keep={args.keep}"
        + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else "")
    )
    for net in args.nets:
        bench_net(net, variants, args)


if __name__ == "__main__":
    main()
