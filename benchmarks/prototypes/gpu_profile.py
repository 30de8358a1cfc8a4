"""One-off GPU diagnosis (2026-12-04): where a packed resnet18 step spends its time on CUDA, and what the
compiled exact graph keeps. python benchmarks/prototypes/gpu_profile.py"""

import collections
import copy
import time

import torch
import torch.nn.functional as F
import torchvision
from torch.profiler import ProfilerActivity, profile

import lightning_ftprop as ftp
from lightning_ftprop import memory

torch.manual_seed(0)
x = torch.randn(32, 3, 224, 224, device="cuda")
y = torch.randint(0, 1000, (32,), device="cuda")
model = torchvision.models.resnet18(num_classes=1000).cuda()
ftp.convert(model, "sign", "soft_hinge")


def step(m, packed):
    with memory.packed() if packed else torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        loss = F.cross_entropy(m(x), y)
    loss.backward()


for packed in (False, True):
    for _ in range(3):
        step(model, packed)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(5):
        step(model, packed)
    torch.cuda.synchronize()
    print("packed" if packed else "exact", f"{(time.perf_counter() - t) / 5 * 1e3:.1f} ms/step", flush=True)

with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    step(model, True)
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=30, max_name_column_width=60))
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15, max_name_column_width=60))

# what compiled exact keeps, by dtype
torch._dynamo.reset()
exact = torch.compile(copy.deepcopy(model))
step(exact, False)
kept = collections.Counter()


def pack(t):
    kept[(str(t.dtype), tuple(t.shape)[:2])] += t.numel() * t.element_size()
    return t


with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
    out = exact(x)
print("compiled exact keeps (MB):", sum(kept.values()) / 2**20)
for k, v in kept.most_common(12):
    print("  ", k, f"{v / 2**20:.1f}")
