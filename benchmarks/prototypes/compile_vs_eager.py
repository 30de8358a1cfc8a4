"""Do compiled units give eager's gradients? resnet18 (sign/soft_hinge): eager exact vs torch.compile
(inductor) exact and packed. python benchmarks/prototypes/compile_vs_eager.py [cuda|cpu] [size]"""

import copy
import sys

import torch
import torch.nn.functional as F
import torchvision

import lightning_ftprop as ftp
from lightning_ftprop import memory

device = sys.argv[1] if len(sys.argv) > 1 else "cpu"
size = int(sys.argv[2]) if len(sys.argv) > 2 else 32
torch.manual_seed(0)
x = torch.randn(8, 3, size, size, device=device)
y = torch.randint(0, 10, (8,), device=device)
base = torchvision.models.resnet18(num_classes=10).to(device)
ftp.convert(base, "sign", "soft_hinge")


def grads(model, packed):
    model.zero_grad(set_to_none=True)
    before = torch.cuda.memory_allocated() if device == "cuda" else 0
    with memory.packed() if packed else torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        loss = F.cross_entropy(model(x), y)
    if device == "cuda":
        print(f"  held after the forward: {(torch.cuda.memory_allocated() - before) / 2**20:.1f} MB", flush=True)
    loss.backward()
    return {n.removeprefix("_orig_mod."): p.grad.clone() for n, p in model.named_parameters()}


want = grads(copy.deepcopy(base), False)
for name, packed in (("compiled exact", False), ("compiled packed", True)):
    torch._dynamo.reset()
    got = grads(torch.compile(copy.deepcopy(base)), packed)
    worst = max(float((got[k] - want[k]).abs().max() / want[k].abs().max().clamp_min(1e-30)) for k in want)
    print(
        f"{name} vs eager exact on {device}: worst relative difference {worst:.2e}; "
        f"|conv1 grad| eager {float(want['conv1.weight'].norm()):.4e} compiled {float(got['conv1.weight'].norm()):.4e}",
        flush=True,
    )
