"""Recompute: keep threshold outputs as bits and rebuild everything else in the backward.

Under :func:`recompute` a training step keeps, between its forward and its backward, the threshold
outputs in bits and little else; every float tensor that autograd would keep for the backward and that
a module call produced from those bits is rebuilt in the backward by calling that module again.

How the segments are found: from the **module calls seen during the forward**. We chose module calls
over an fx/export graph and over the autograd graph because

* fx and export need a traceable ``forward``: Hugging Face models branch on config values and on
  tensor shapes, and a graph traced for one input does not run another; module calls need nothing of
  the model's ``forward`` - it runs as written, python control flow included;
* the autograd graph says which tensors are kept but not how to compute them again: a node's
  forward cannot be re-run from its ``grad_fn``. A module call can: it is a callable with inputs.

Two mechanisms, both driven by what the calls do:

1. **Recorded calls (every leaf module: conv, BatchNorm, linear, LayerNorm, pooling, dropout, the
   units).** Each call keeps a recipe: the module, its inputs (stored as everything else is, see
   below) and, when the call drew random numbers, the RNG state. A tensor that autograd saves is stored
   as

   * bits, when it is a threshold output (:func:`~lightning_ftprop.memory.pack`);
   * a *reference* ``(call, output, view)``, when it is the output of a recorded call (or a view of
     one) that has not been changed in place since;
   * a reference to the saving call's own re-run, when it is an intermediate of a leaf call
     (max-pool indices, a saved mask that is not small);
   * itself otherwise (parameters, small tensors, inputs that no call produced).

   In the backward, the first use of a reference calls the module again, under ``enable_grad`` with the
   stored inputs (rebuilt the same way, recursively), the forward's RNG state and the forward's unit
   state, and collects its output and the tensors it saves; they stay cached until the last reference
   to that call is gone. So ``conv -> BN -> unit`` keeps the conv's input in bits and nothing else: BN's
   input and the unit's ``z`` are references.
2. **Segments (a module whose output is a threshold output and inside which a unit kept a float
   ``z`` that no reference could replace).** A torchvision ``BasicBlock`` is one: ``out += identity``
   changes BN's output in place before the last unit sees it. On the first training call such a module
   runs plainly and is found; from its second call on it runs under non-reentrant
   ``torch.utils.checkpoint`` and keeps only its input (in bits).

What stays un-recomputed is named in one warning: threshold units that kept a float ``z`` outside any
segment after the first training forward.

Exactness. The re-run calls the same module with bitwise the same inputs, RNG state and unit state, so
the rebuilt tensors are bitwise the forward's where the kernels are deterministic (all CPU kernels we
test); BatchNorm's running statistics are restored after every re-run, so they are updated once per
step. The tests compare gradients with ``rtol=1e-5, atol=1e-7`` (float reassociation in kernels that
pick a different blocking) and find them bitwise equal on the CPU.

Limits: a module's output that is changed in place after the call (``out += identity``) is not
referenced (its value is no longer the call's); a view of a view of an output is not referenced; the
recipe keeps the call's non-tensor arguments as they are, so a module that reads mutable global state
(other than the RNG, BatchNorm statistics and the units' save hook, which are handled) must read the
same in the backward.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import types
import warnings
from typing import Any, Iterator, List, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree
from torch.utils.weak import WeakIdKeyDictionary

from lightning_ftprop.memory import unit_state
from lightning_ftprop.memory.hooks import _levels, _Packed, pack, unpack
from lightning_ftprop.nn import ThresholdUnit

__all__ = ["recompute"]

_SEGMENTS = "_ftprop_segments"  # instance attribute of every module recompute() wraps: its _Role
_SMALL = 1 << 14  # saved tensors with at most this many elements are kept as they are


class _State(threading.local):
    """Per thread (saved-tensor hooks are per thread too)."""

    def __init__(self):
        self.depth = 0  # wrapped non-leaf calls running now
        self.plain = 0  # inside a segment's checkpoint or a re-run: wrappers step aside
        self.uncovered: List[str] = []  # units that kept a float z in this forward
        self.outputs = WeakIdKeyDictionary()  # output tensor -> (record, index, version)


_state = _State()


# --- references: a saved tensor stored as "slot of a call's re-run" --------------------------------


class _Ref:
    """A saved tensor stored as slot ``index`` of ``record``'s re-run (``kind`` "out" or "saved").

    ``view`` is ``(size, stride, offset, base stride)`` when the tensor is a view of that slot.
    """

    __slots__ = ("record", "kind", "index", "view", "__weakref__")

    def __init__(self, record: _Record, kind: str, index: int, view=None):
        self.record, self.kind, self.index, self.view = record, kind, index, view
        record.pending += 1

    def __del__(self):
        record = self.record
        record.pending -= 1
        if record.pending == 0:
            record.cache = None

    def value(self) -> Tensor:
        outputs, saved = self.record.rerun()
        t = outputs[self.index] if self.kind == "out" else saved[self.index]
        if self.view is not None:
            size, stride, offset, base_stride = self.view
            if t.stride() != base_stride:  # lay the re-run output out as the forward's was
                t = torch.empty_strided(t.shape, base_stride, dtype=t.dtype, device=t.device).copy_(t)
            t = t.as_strided(size, stride, t.storage_offset() + offset)
        return t


def _load(stored) -> Any:
    """Rebuild what :func:`_store` returned."""
    if isinstance(stored, _Ref):
        return stored.value()
    if isinstance(stored, _Packed):
        return unpack(stored)
    return stored


def _reference(x: Tensor) -> Optional[_Ref]:
    """A reference to the recorded call whose output ``x`` is (or is a plain view of), if any."""
    hit = _state.outputs.get(x)
    if hit is not None and hit[2] == x._version:
        return _Ref(hit[0], "out", hit[1])
    base = x._base
    if base is None or x.dtype != base.dtype:
        return None
    hit = _state.outputs.get(base)
    if hit is None or hit[2] != base._version:
        return None
    view = (x.size(), x.stride(), x.storage_offset() - base.storage_offset(), base.stride())
    return _Ref(hit[0], "out", hit[1], view)


def _store(x: Tensor):
    """How a saved tensor outside any recorded call is kept: bits, a reference, or as :func:`pack` keeps it."""
    if x.is_floating_point() and _levels(x) is None:
        ref = _reference(x)
        if ref is not None:
            return ref
    return pack(x)


# --- recorded calls ----------------------------------------------------------------------------------


class _Record:
    """A leaf module call that can be run again: module, stored inputs, RNG and unit state."""

    __slots__ = ("module", "spec", "leaves", "grads", "rng", "policy", "clone", "saved", "wanted", "pending", "cache")

    def __init__(self, module: nn.Module, spec, leaves: List[Any], grads: List[bool]):
        self.module, self.spec, self.leaves, self.grads = module, spec, leaves, grads
        self.rng = None
        self.policy = unit_state.active_policy()
        self.clone = False  # the call changed an input in place: re-run on a copy
        self.saved = 0  # how many tensors the call saved
        self.wanted: set = set()  # which of them are stored as references to this re-run
        self.pending = 0  # live references to this call's re-run
        self.cache = None

    def rerun(self):
        """``(outputs, saved)`` of the call run again; cached while references to it live."""
        if self.cache is None:
            self.cache = self._run()
        return self.cache

    def _run(self):
        leaves = []
        for stored, grad in zip(self.leaves, self.grads):
            value = _load(stored)
            if isinstance(value, Tensor):
                value = value.detach()
                value = value.clone() if self.clone else value
                value.requires_grad_(grad)
            leaves.append(value)
        args, kwargs = pytree.tree_unflatten(leaves, self.spec)
        saved: List[Tensor] = []

        def keep(t):
            saved.append(t)
            return t

        with contextlib.ExitStack() as stack:
            stack.enter_context(_rerunning([self.module]))
            if self.rng is not None:
                stack.enter_context(torch.random.fork_rng(devices=self.rng[1]))
                torch.set_rng_state(self.rng[0])
                for device, state in zip(self.rng[1], self.rng[2]):
                    torch.cuda.set_rng_state(state, device)
            stack.enter_context(unit_state.use_policy(self.policy))
            stack.enter_context(torch.enable_grad())
            stack.enter_context(torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t))
            out = _call(self.module, args, kwargs)
        if len(saved) != self.saved:
            raise RuntimeError(
                f"recompute(): {type(self.module).__name__} saved {len(saved)} tensors when run again in the "
                f"backward but {self.saved} in the forward; its forward must not depend on state that changes "
                "between the two (turn recompute off for this model)"
            )
        outputs = [t.detach() for t in pytree.tree_leaves(out) if isinstance(t, Tensor)]
        return outputs, [t.detach() if i in self.wanted else None for i, t in enumerate(saved)]


def _call(module: nn.Module, args, kwargs):
    """The module's own (class) ``forward``: the wrapper in its ``__dict__`` and the hooks are bypassed."""
    return type(module).forward(module, *args, **kwargs)


def _rng_state(leaves: Sequence[Any]):
    devices = sorted({t.device.index or 0 for t in leaves if isinstance(t, Tensor) and t.is_cuda})
    return torch.get_rng_state(), devices, [torch.cuda.get_rng_state(d) for d in devices]


class _Saver:
    """The pack hook inside one recorded call: how each tensor the call saves is kept."""

    def __init__(self, record: _Record, leaves: List[Any], stored: List[Any], module):
        self.record = record
        self.inputs = {id(t): (t, s, t._version) for t, s in zip(leaves, stored) if isinstance(t, Tensor)}
        self.own = {id(t) for t in module.parameters(recurse=False)} | {id(t) for t in module.buffers(recurse=False)}
        self.kept_float = False

    def close(self) -> bool:
        self.record, self.inputs, self.own = None, {}, set()
        return self.kept_float

    def __call__(self, x: Tensor):
        record = self.record
        record.saved += 1
        hit = self.inputs.get(id(x))
        if hit is not None and hit[0] is x and hit[2] == x._version:
            self.kept_float |= isinstance(hit[1], Tensor) and hit[1].is_floating_point()
            return hit[1]
        if x.is_floating_point() and _levels(x) is not None:
            return pack(x)
        ref = _reference(x) if x.is_floating_point() else None
        if ref is not None:
            return ref
        base = x if x._base is None else x._base
        if id(base) in self.own or base.grad_fn is None and base.requires_grad or x.numel() <= _SMALL:
            return x
        if x.dtype in (torch.bool, torch.uint8):
            return pack(x)
        record.wanted.add(record.saved - 1)
        return _Ref(record, "saved", record.saved - 1)


def _record_call(module: nn.Module, args, kwargs):
    """Run one leaf module call, storing its saved tensors per the module docstring."""
    leaves, spec = pytree.tree_flatten((args, kwargs))
    tensors = [t for t in leaves if isinstance(t, Tensor)]
    stored = [_store(t) if isinstance(t, Tensor) else t for t in leaves]
    record = _Record(module, spec, stored, [isinstance(t, Tensor) and t.requires_grad for t in leaves])
    versions = [t._version for t in tensors]
    rng = _rng_state(leaves)
    saver = _Saver(record, leaves, stored, module)
    try:
        with torch.autograd.graph.saved_tensors_hooks(saver, _load):
            out = _call(module, args, kwargs)
    finally:
        kept_float = saver.close()  # autograd may keep the hook: it must not keep the inputs
    after = _rng_state(leaves)
    if not torch.equal(after[0], rng[0]) or any(not torch.equal(a, b) for a, b in zip(after[2], rng[2])):
        record.rng = rng
    record.clone = any(t._version != v for t, v in zip(tensors, versions))
    held = {id(t) for t in tensors}
    for index, t in enumerate(x for x in pytree.tree_leaves(out) if isinstance(x, Tensor)):
        if id(t) not in held and t.is_floating_point():  # an input given back keeps its own recipe
            _state.outputs[t] = (record, index, t._version)
    return out, kept_float and isinstance(module, ThresholdUnit)


@contextlib.contextmanager
def _rerunning(modules: Sequence[nn.Module]) -> Iterator[None]:
    """A re-run: wrappers step aside, and BatchNorm running statistics are restored afterwards."""
    norms = [
        m
        for module in modules
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.training and m.track_running_stats
    ]
    kept = [[b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None] for m in norms]
    _state.plain += 1
    try:
        with unit_state.recomputation():
            yield
    finally:
        _state.plain -= 1
        with torch.no_grad():
            for m, buffers in zip(norms, kept):
                live = [b for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
                for b, old in zip(live, buffers):
                    b.copy_(old)


# --- the wrappers ------------------------------------------------------------------------------------


class _Role:
    """What recompute() made of one module: a recorded ``leaf`` or a ``node`` that may become a segment."""

    def __init__(self, kind: str, name: str, plan: _Plan):
        self.kind, self.name, self.plan = kind, name, plan
        self.segment = False


class _Plan:
    """Shared by the wrappers of one recompute() call."""

    def __init__(self):
        self.warned = False


def _leaf_forward(self: nn.Module, *args, **kwargs):
    if _state.plain or not torch.is_grad_enabled():
        return _call(self, args, kwargs)
    out, uncovered = _record_call(self, args, kwargs)
    if uncovered and _state.depth:
        _state.uncovered.append(self.__dict__[_SEGMENTS].name)
    return out


def _segment_contexts(module: nn.Module):
    # Inside a segment the units keep z (it is recomputed anyway), in the forward and in the re-run alike,
    # so that both save the same tensors.
    return _inside_segment(), _segment_rerun(module)


@contextlib.contextmanager
def _inside_segment() -> Iterator[None]:
    _state.plain += 1
    try:
        with unit_state.float_state():
            yield
    finally:
        _state.plain -= 1


@contextlib.contextmanager
def _segment_rerun(module: nn.Module) -> Iterator[None]:
    with _rerunning([module]), unit_state.float_state():
        yield


def _node_forward(self: nn.Module, *args, **kwargs):
    role = self.__dict__[_SEGMENTS]
    forward = functools.partial(type(self).forward, self)
    if _state.plain or not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    outermost = _state.depth == 0
    _state.depth += 1
    try:
        with torch.autograd.graph.saved_tensors_hooks(_store, _load) if outermost else contextlib.nullcontext():
            if role.segment:
                return torch.utils.checkpoint.checkpoint(
                    forward,
                    *args,
                    use_reentrant=False,
                    context_fn=functools.partial(_segment_contexts, self),
                    **kwargs,
                )
            mark = len(_state.uncovered)
            out = forward(*args, **kwargs)
            if len(_state.uncovered) > mark and isinstance(out, Tensor) and _levels(out) is not None and not outermost:
                role.segment = True  # from the next call on
                del _state.uncovered[mark:]
            return out
    finally:
        _state.depth -= 1
        if outermost:
            uncovered, _state.uncovered = list(dict.fromkeys(_state.uncovered)), []
            if uncovered and not role.plan.warned:
                role.plan.warned = True
                warnings.warn(
                    f"recompute(): {len(uncovered)} threshold unit(s) keep their float input z un-recomputed (still "
                    "packed): no module call produced z unchanged and no module around them outputs unit values. "
                    f"Not covered: {', '.join(uncovered)}",
                    UserWarning,
                    stacklevel=3,
                )


def _has_units(module: nn.Module) -> bool:
    return any(isinstance(m, ThresholdUnit) for m in module.modules())


def recompute(model: nn.Module, enable: bool = True) -> List[str]:
    """Make ``model`` rebuild in the backward what it computed from threshold outputs (in place).

    See the module docstring for what is kept and what is rebuilt. ``recompute(model, enable=False)``
    undoes it; calling it again starts afresh. Only instance ``forward`` attributes change: parameters,
    buffers and ``state_dict`` keys stay as they are. Under ``torch.no_grad`` everything runs plainly.
    BatchNorm running statistics are updated once per forward, and dropout draws the same mask in the
    re-run as in the forward.

    >>> import torch, torchvision, lightning_ftprop as ftp
    >>> model = torchvision.models.resnet18(num_classes=10)
    >>> _ = ftp.convert(model, "sign", "soft_hinge")
    >>> ftp.memory.recompute(model)[:3]
    ['relu', 'layer1.0.relu', 'layer1.1.relu']
    >>> model(torch.randn(2, 3, 32, 32)).sum().backward()

    Returns:
        The names of the threshold units whose state it manages.

    Warns:
        UserWarning: once, after the first training forward, naming the threshold units that kept a
        float ``z`` no re-run can rebuild; they train un-recomputed (still packed).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: ``enable=True`` on a model without threshold units.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"recompute() expects an nn.Module, got {type(model).__name__}")
    for module in model.modules():
        if _SEGMENTS in module.__dict__:
            del module.__dict__[_SEGMENTS]
            module.__dict__.pop("forward", None)
    if not enable:
        return []
    if not _has_units(model):
        raise ValueError(
            f"recompute() found no threshold unit in {type(model).__name__}; convert it first "
            "(lightning_ftprop.convert) - there is nothing to recompute from packed bits"
        )
    plan = _Plan()
    units = []
    for name, module in model.named_modules():
        if isinstance(module, ThresholdUnit):
            units.append(name or type(module).__name__)
        if not module._modules:
            role, forward = _Role("leaf", name, plan), _leaf_forward
        elif module is model or _has_units(module):
            role, forward = _Role("node", name, plan), _node_forward
        else:
            continue
        module.__dict__[_SEGMENTS] = role
        module.__dict__["forward"] = types.MethodType(forward, module)
    return units
