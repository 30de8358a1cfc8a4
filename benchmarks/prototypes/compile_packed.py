"""PROTOTYPE, not part of the package: bit-packed threshold outputs under ``torch.compile``.

Status (2026-12-04): measured here, not wired into ``lightning_ftprop``. Under ``torch.compile`` the
package's ``memory="packed"`` still packs nothing (docs/memory.md, Limits); this file is the design
sized for that work. Measured on the 2-core CPU machine, batch 8, one thread, bytes the compiled graph
saves (weights excluded), against the compiled float twin: a conv-BN-unit-pool net 0.68x (exact 0.95x),
torchvision resnet18 at 64x64 0.63x with ``torch._functorch.config.ban_recompute_used_far_apart=False``
(0.76x without; exact 1.13x); 0 graph breaks with ``fullgraph=True``; gradients bitwise those of the
compiled exact units. A compiled resnet18 step took 0.26-0.27 s against 0.17-0.18 s for exact.
What is left to wire it in: a unit forward that takes this path when ``torch.compiler.is_compiling()``
under a packed mode, a repack after max-pools that follow units, NaN (this design maps NaN to a unit
value), qrelu ``per_threshold``, ``weighted=False``, the hinge and log_loss rules.

Original notes:

Prototype: threshold units whose compiled graphs save bit-packed codes, not float outputs.

Design ("aten-unpack"): the unit's forward packs its codes into uint8 bit planes and computes its
output h by *unpacking those planes with plain pointwise aten ops*. Consumers of h (the next conv,
a max-pool) therefore depend on h only through the planes, and AOTAutograd's min-cut partitioner
prefers to save the planes (1 bit/elt) and rematerialise h in the backward (h is a cheap pointwise
function of them). The unit's backward reads z; z = BatchNorm(x) is itself pointwise in the conv
output x that BatchNorm's backward keeps anyway, so the partitioner recomputes z instead of saving it.

Three entry points:
  unit(z, kind, rule, n)          autograd.Function, pack/unpack in aten (the recommended design)
  unit_custom_op(z, kind, rule, n) torch.library.custom_op variant (pack op + differentiable unpack op)
  sac_policy / checkpointed(...)   selective-activation-checkpointing policy that forces the same cut
kind: "sign" (h in {-1,+1}), "step" ({0,1}), "qrelu" (n thresholds, {0,1/n,..,1}, backward "single").
rule: "soft_hinge" (dz = g (1 - tanh(u)^2)) or "sste" (dz = g 1[|u| <= 1]); u = z (sign/step) or 2z-1 (qrelu).
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import partial
from typing import Tuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

KINDS = ("sign", "step", "qrelu")
RULES = ("soft_hinge", "sste")


def bits_for(kind: str, n: int) -> int:
    return 1 if kind in ("sign", "step") else max(1, math.ceil(math.log2(n + 1)))


# --- codes <-> h ---------------------------------------------------------------------------------------


def codes_of(z: Tensor, kind: str, n: int) -> Tensor:
    """uint8 codes: 1[z > 0] (sign, step), clip(ceil((n-1) z), 0, n) (qrelu). NaN is not representable."""
    if kind in ("sign", "step"):
        return (z > 0).to(torch.uint8)
    return torch.clamp(torch.mul(z, n - 1).ceil(), 0, n).to(torch.uint8)


def decode(codes: Tensor, kind: str, n: int, dtype: torch.dtype) -> Tensor:
    """h from codes, equal to the eager forward (sign_values / step_values / qrelu_values)."""
    c = codes.to(dtype)
    if kind == "sign":
        return c * 2 - 1
    if kind == "step":
        return c
    return c / n


def pack_planes(codes: Tensor, bits: int) -> Tensor:
    """(bits, ceil(N/8)) uint8; bit i%8 of byte i//8 of plane j is bit j of codes[i] (little-endian, as codec.py)."""
    flat = codes.reshape(-1)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    shifts = torch.arange(8, dtype=torch.uint8, device=flat.device)
    planes = [(((flat >> j) & 1).view(-1, 8) << shifts).sum(-1, dtype=torch.uint8) for j in range(bits)]
    return torch.stack(planes)


def unpack_planes(planes: Tensor, numel: int) -> Tensor:
    """The inverse of pack_planes: flat uint8 codes (pointwise shifts: the partitioner can recompute them)."""
    shifts = torch.arange(8, dtype=torch.uint8, device=planes.device)
    codes = None
    for j in range(planes.shape[0]):
        b = ((planes[j].unsqueeze(-1) >> shifts) & 1).reshape(-1)
        if b.numel() != numel:
            b = b[:numel]
        codes = b if codes is None else codes | (b << j)
    return codes


# --- backward rules ------------------------------------------------------------------------------------


def _neighbours(edge: float, a: int, b: Fraction, dtype: torch.dtype) -> Tuple[float, float]:
    """(largest float below, smallest float above) the real (edge - b) / a (computed eagerly, once)."""
    z_e = (Fraction(edge) - b) / a
    guess = torch.tensor(float(z_e), dtype=torch.float64).to(dtype)
    lo = hi = guess
    while Fraction(lo.item()) >= z_e:
        lo = torch.nextafter(lo, torch.tensor(-math.inf, dtype=dtype))
    while Fraction(hi.item()) <= z_e:
        hi = torch.nextafter(hi, torch.tensor(math.inf, dtype=dtype))
    return lo.item(), hi.item()


_WINDOWS = {}


def _window(kind: str, dtype: torch.dtype) -> Tuple[float, float]:
    """hardtanh_backward bounds for sste's closed window, on z itself (exact). Precomputed outside traces."""
    key = (kind, dtype)
    if key not in _WINDOWS:
        a, b = (1, Fraction(0)) if kind in ("sign", "step") else (2, Fraction(-1))
        _WINDOWS[key] = (_neighbours(-1.0, a, b, dtype)[0], _neighbours(1.0, a, b, dtype)[1])
    return _WINDOWS[key]


for _k in KINDS:
    for _d in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        _window(_k, _d)


def unit_backward(g: Tensor, z: Tensor, kind: str, rule: str) -> Tensor:
    if rule == "soft_hinge":
        u = z if kind in ("sign", "step") else z * 2 - 1
        return torch.ops.aten.tanh_backward(g, torch.tanh(u))
    if rule == "sste":
        lo, hi = _window(kind, z.dtype)
        return torch.ops.aten.hardtanh_backward(g, z, lo, hi)
    raise ValueError(rule)


# --- design 1: autograd.Function, pack + unpack in aten --------------------------------------------------


class PackedUnit(torch.autograd.Function):
    @staticmethod
    def forward(z: Tensor, kind: str, rule: str, n: int) -> Tensor:
        planes = pack_planes(codes_of(z, kind, n), bits_for(kind, n))
        return decode(unpack_planes(planes, z.numel()), kind, n, z.dtype).view(z.shape)

    @staticmethod
    def setup_context(ctx, inputs, output):
        z, ctx.kind, ctx.rule, _ = inputs
        ctx.save_for_backward(z)  # the partitioner recomputes it from BatchNorm's input when it can

    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        return unit_backward(g, z, ctx.kind, ctx.rule), None, None, None


def unit(z: Tensor, kind: str = "sign", rule: str = "soft_hinge", n: int = 0) -> Tensor:
    return PackedUnit.apply(z, kind, rule, n)


# --- design 2: torch.library.custom_op ------------------------------------------------------------------


@torch.library.custom_op("ftprop::pack_unit", mutates_args=())
def pack_unit(z: Tensor, kind: str, n: int) -> Tensor:
    """Opaque: codes of z, bit-packed (bits, ceil(N/8)) uint8. Not differentiable."""
    return pack_planes(codes_of(z, kind, n), bits_for(kind, n))


@pack_unit.register_fake
def _(z, kind, n):
    return z.new_empty((bits_for(kind, n), -(-z.numel() // 8)), dtype=torch.uint8)


@torch.library.custom_op("ftprop::unpack_unit", mutates_args=())
def unpack_unit(planes: Tensor, z: Tensor, kind: str, rule: str, n: int) -> Tensor:
    """h decoded from planes; z is an input only for the autograd edge (its values are not read)."""
    return decode(unpack_planes(planes, z.numel()), kind, n, z.dtype).view(z.shape)


@unpack_unit.register_fake
def _(planes, z, kind, rule, n):
    return torch.empty_like(z)


def _setup(ctx, inputs, output):
    _, z, ctx.kind, ctx.rule, _ = inputs
    ctx.save_for_backward(z)


def _bwd(ctx, g):
    (z,) = ctx.saved_tensors
    return None, unit_backward(g, z, ctx.kind, ctx.rule), None, None, None


unpack_unit.register_autograd(_bwd, setup_context=_setup)


def unit_custom_op(z: Tensor, kind: str = "sign", rule: str = "soft_hinge", n: int = 0) -> Tensor:
    return torch.ops.ftprop.unpack_unit(torch.ops.ftprop.pack_unit(z, kind, n), z, kind, rule, n)


# --- design 3: selective activation checkpointing policy --------------------------------------------------


_ALWAYS_SAVE = {
    torch.ops.ftprop.pack_unit.default,
    torch.ops.aten.convolution.default,
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
}


def sac_policy(ctx, op, *args, **kwargs):
    """Save the packed codes (and the matmuls); recompute everything else (h, BatchNorm's affine, z)."""
    if op in _ALWAYS_SAVE:
        return CheckpointPolicy.MUST_SAVE
    if op == torch.ops.aten.sum.dim_IntList and kwargs.get("dtype") == torch.uint8:  # aten packing
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def checkpointed(fn, *args):
    return checkpoint(
        fn, *args, use_reentrant=False, context_fn=partial(create_selective_checkpoint_contexts, sac_policy)
    )


# --- value-preserving ops after a unit (max-pool): re-pack so their consumers keep bits too -----------


class Repack(torch.autograd.Function):
    """Identity in value and gradient on a tensor that holds unit values (a max-pool of h): its output is
    unpack(pack(x)), so a consumer (the next conv) depends on it only through the packed planes."""

    @staticmethod
    def forward(x: Tensor, kind: str, n: int) -> Tensor:
        planes = pack_planes(codes_of_values(x, kind, n), bits_for(kind, n))
        return decode(unpack_planes(planes, x.numel()), kind, n, x.dtype).view(x.shape)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        return g, None, None


def codes_of_values(h: Tensor, kind: str, n: int) -> Tensor:
    """Codes of unit *values* h (the inverse of decode): 1[h > 0] (sign, step), round(n h) (qrelu)."""
    if kind in ("sign", "step"):
        return (h > 0).to(torch.uint8)
    return torch.round(h * n).to(torch.uint8)


class RepackModule(nn.Module):
    def __init__(self, kind="sign", n=0, impl="aten"):
        super().__init__()
        self.kind, self.n, self.impl = kind, n, impl

    def forward(self, x):
        if self.impl.endswith("sac"):
            return checkpointed(Repack.apply, x, self.kind, self.n)
        return Repack.apply(x, self.kind, self.n)


# --- modules --------------------------------------------------------------------------------------------


class Unit(nn.Module):
    def __init__(self, kind="sign", rule="soft_hinge", n=0, impl="aten"):
        super().__init__()
        self.kind, self.rule, self.n, self.impl = kind, rule, n if kind == "qrelu" else 0, impl
        if kind == "qrelu" and n < 2:
            raise ValueError("qrelu needs n >= 2")

    def forward(self, z):
        f = unit if self.impl.startswith("aten") else unit_custom_op
        if self.impl.endswith("sac"):
            return checkpointed(f, z, self.kind, self.rule, self.n)
        return f(z, self.kind, self.rule, self.n)

    def extra_repr(self):
        return f"kind={self.kind}, rule={self.rule}, n={self.n}, impl={self.impl}"


def swap_relus(model: nn.Module, make, repack=None) -> nn.Module:
    """Every nn.ReLU -> make(); with repack, every nn.MaxPool2d -> Sequential(pool, repack())
    (in these models every max-pool follows a unit)."""
    for name, child in model.named_children():
        if isinstance(child, nn.ReLU):
            setattr(model, name, make())
        elif isinstance(child, nn.MaxPool2d) and repack is not None:
            setattr(model, name, nn.Sequential(child, repack()))
        else:
            swap_relus(child, make, repack)
    return model


# --- entry points -----------------------------------------------------------------------------------------


def convert_for_compile(model: nn.Module, kind="sign", rule="soft_hinge", n=0, impl="aten_sac") -> nn.Module:
    """ReLU -> unit (per-unit SAC region: MUST_SAVE the bit planes, PREFER_RECOMPUTE h); max-pool -> pool + Repack."""
    return swap_relus(model, lambda: Unit(kind, rule, n, impl), lambda: RepackModule(kind, n, impl))


class CompiledPacked:
    """torch.compile(model, fullgraph=True) whose compilations run with the private partitioner knob
    ban_recompute_used_far_apart=False, so a residual unit's z (bn(conv(h)) + identity) is recomputed
    from BatchNorm's input and the identity's bit planes instead of being kept as float. The knob is read
    when a graph is compiled (first call, recompiles), so every call runs inside the patch."""

    def __init__(self, model: nn.Module, knob: bool = True, **compile_kwargs):
        import torch._functorch.config as fcfg

        compile_kwargs.setdefault("fullgraph", True)
        self.compiled = torch.compile(model, **compile_kwargs)
        self.patch = fcfg.patch(ban_recompute_used_far_apart=False) if knob else None

    def __call__(self, *args, **kwargs):
        if self.patch is None:
            return self.compiled(*args, **kwargs)
        with self.patch:
            return self.compiled(*args, **kwargs)
