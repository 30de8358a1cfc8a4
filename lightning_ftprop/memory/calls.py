"""Recorded module calls: a saved tensor kept as a recipe ("slot of that call, run again") instead of floats.

This is the mechanism under :func:`lightning_ftprop.memory.recompute` (whose docstring says why we
work from module calls). Every leaf module call (conv, BatchNorm, linear, LayerNorm, pooling,
dropout, the units) run through :func:`record_call` keeps a recipe: the module, its inputs (stored
as everything else is, see below) and, when the call drew random numbers, the RNG state. A tensor
that autograd saves is stored by :func:`store` (outside a recorded call) or :class:`_Saver` (inside
one) as

* bits, when it is a threshold output (:func:`~lightning_ftprop.memory.hooks.pack`);
* a *reference* :class:`_Ref` ``(call, output, view)``, when it is the output of a recorded call (or
  a plain view of one) that has not been changed in place since;
* a reference to the saving call's own re-run, when it is a large intermediate of that call
  (max-pool indices);
* itself otherwise (parameters, tensors of at most ``_SMALL`` elements, inputs no call made; bool and
  uint8 tensors as :func:`~lightning_ftprop.memory.hooks.pack` keeps them).

In the backward, the first use of a reference runs the call again (:meth:`_Record.rerun`): the
module's own ``forward`` (under ``enable_grad`` when saved tensors of the call are asked for, else
under ``no_grad``: the same kernels, no graph), with the stored inputs (rebuilt the same way,
recursively), the forward's RNG state, the forward's autocast state (device type, dtype, enabled, cache, for
the CPU and the inputs' device, as ``torch.utils.checkpoint`` restores it) and the forward's unit-state policy
(:mod:`~lightning_ftprop.unit_state`), inside :func:`rerunning` (BatchNorm running statistics
restored afterwards, :func:`~lightning_ftprop.unit_state.recomputing` True). Its output and the
saved tensors that references ask for stay cached until the last reference to the call is gone. A
call that changed an input in place (``ReLU(inplace=True)``) is re-run on a copy. So
``conv -> BN -> unit`` keeps the conv's input in bits and nothing else: BN's input and the unit's
``z`` are references to the conv and BN calls, and the backward runs conv and BN once more.

    stored form        when                                         rebuilt by
    PackedTensor            a threshold output                           unpack (lossless)
    _Ref("out")        a recorded call's output, unchanged          re-running that call
    _Ref("saved")      a large intermediate of the saving call      re-running the saving call
    the tensor         parameters, small tensors, other inputs      nothing

Per thread, like saved-tensor hooks: ``state`` holds which output tensors came from which call
(weakly: an entry goes with its tensor).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator, List, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.utils.weak import WeakIdKeyDictionary

from lightning_ftprop import torch_private, unit_state
from lightning_ftprop.memory import report
from lightning_ftprop.memory.hooks import PackedTensor, pack, unit_kind_of, unpack
from lightning_ftprop.nn import ThresholdUnit
from lightning_ftprop.torch_private import version, view_base

__all__ = ["state", "store", "load", "record_call", "own_forward", "rerunning"]

pytree = torch_private.pytree()

_SMALL = 1 << 14  # saved tensors with at most this many elements are kept as they are


class _State(threading.local):
    """Per thread (saved-tensor hooks are per thread too)."""

    def __init__(self):
        self.depth = 0  # wrapped non-leaf calls running now
        self.plain = 0  # inside a segment's checkpoint or a re-run: wrappers step aside
        self.uncovered: List[str] = []  # units that kept a float z in this forward
        self.outputs = WeakIdKeyDictionary()  # output tensor -> (record, index, version)


state = _State()


# --- references: a saved tensor stored as "slot of a call's re-run" --------------------------------


class _Ref:
    """A saved tensor stored as slot ``index`` of ``record``'s re-run (``slot`` "out" or "saved").

    ``view`` is ``(size, stride, offset, base stride)`` when the tensor is a view of that slot.
    """

    __slots__ = ("record", "slot", "index", "view", "__weakref__")

    def __init__(self, record: _Record, slot: str, index: int, view=None):
        self.record, self.slot, self.index, self.view = record, slot, index, view
        record.pending += 1

    def __del__(self):
        record = self.record
        record.pending -= 1
        if record.pending == 0:
            record.cache = None

    def value(self) -> Tensor:
        if torch.is_grad_enabled() and torch_private.in_backward():  # grad mode in a backward: create_graph=True
            raise RuntimeError(
                "double backward (create_graph=True) under memory='recompute' is not supported: the tensors a re-run "
                "rebuilds carry no autograd history, so second-order terms through them would be lost. Use "
                "memory='packed' (second-order exact after BatchNorm and max-pool) or memory='exact' for this step"
            )
        outputs, saved = self.record.rerun()
        t = outputs[self.index] if self.slot == "out" else saved[self.index]
        if self.view is not None:
            size, stride, offset, base_stride = self.view
            if t.stride() != base_stride:  # lay the re-run output out as the forward's was
                t = torch.empty_strided(t.shape, base_stride, dtype=t.dtype, device=t.device).copy_(t)
            t = t.as_strided(size, stride, t.storage_offset() + offset)
        return t


def load(stored) -> Any:
    """Rebuild what :func:`store` returned.

    Bits are unpacked, a reference runs its call again (once: the re-run is cached while references to
    it live), anything else is returned as it is.

    >>> import torch
    >>> from torch import nn
    >>> runs = []
    >>> class Counted(nn.Linear):
    ...     def forward(self, x):
    ...         runs.append(1)
    ...         return super().forward(x)
    >>> out, _ = record_call(Counted(3, 2), (torch.ones(2, 3),), {})
    >>> ref = store(out)                     # "output 0 of that call, run again"
    >>> len(runs)
    1
    >>> torch.equal(load(ref), out)          # the backward's first use runs the call again
    True
    >>> len(runs)
    2
    """
    if isinstance(stored, _Ref):
        return stored.value()
    if isinstance(stored, PackedTensor):
        return unpack(stored)
    return stored


def _reference(x: Tensor) -> Optional[_Ref]:
    """A reference to the recorded call whose output ``x`` is (or is a plain view of), if any."""
    hit = state.outputs.get(x)
    if hit is not None and hit[2] is not None and hit[2] == version(x):
        return _Ref(hit[0], "out", hit[1])
    base = view_base(x)
    if base is None or x.dtype != base.dtype:
        return None
    hit = state.outputs.get(base)
    if hit is None or hit[2] is None or hit[2] != version(base):
        return None
    view = (x.size(), x.stride(), x.storage_offset() - base.storage_offset(), base.stride())
    return _Ref(hit[0], "out", hit[1], view)


def store(x: Tensor):
    """How a saved tensor outside any recorded call is kept: bits, a reference, or as :func:`pack` keeps it.

    >>> import torch
    >>> from torch import nn
    >>> from lightning_ftprop import functional as F
    >>> h = F.sign(torch.tensor([0.5, -2.0, -0.1, 3.0], requires_grad=True), rule="sste")
    >>> type(store(h)).__name__              # a threshold output: 1 bit per element
    'PackedTensor'
    >>> load(store(h))
    tensor([ 1., -1., -1.,  1.])
    >>> out, _ = record_call(nn.Linear(3, 2), (torch.ones(2, 3),), {})
    >>> type(store(out)).__name__            # a recorded call's output: a reference to that call
    '_Ref'
    >>> x = torch.ones(2, 3)                 # an input no recorded call made: kept as it is
    >>> store(x) is x
    True
    """
    if x.is_floating_point() and unit_kind_of(x) is None:
        ref = _reference(x)
        if ref is not None:
            return ref
    return pack(x)


# --- recorded calls ----------------------------------------------------------------------------------


class _Record:
    """A leaf module call that can be run again: module, stored inputs, RNG and unit state."""

    __slots__ = (
        "module",
        "treespec",
        "leaves",
        "grads",
        "rng",
        "autocast",
        "policy",
        "clone",
        "n_saved",
        "wanted",
        "pending",
        "cache",
        "before_rerun",
    )

    def __init__(self, module: nn.Module, treespec, leaves: List[Any], grads: List[bool]):
        self.module, self.treespec, self.leaves, self.grads = module, treespec, leaves, grads
        self.rng = None
        self.autocast = _autocast_state(())  # set by record_call: the forward's autocast state
        self.policy = None  # the unit-state policy the call ran under (set by record_call)
        self.clone = False  # the call changed an input in place: re-run on a copy
        self.n_saved = 0  # how many tensors the call saved
        self.wanted: set = set()  # which of them are stored as references to this re-run
        self.pending = 0  # live references to this call's re-run
        self.cache = None
        self.before_rerun = None  # called with the module before a re-run (FSDP2: gather its parameters)

    def rerun(self):
        """``(outputs, saved)`` of the call run again; cached while references to it live."""
        if self.cache is None:
            self.cache = self._run()
        return self.cache

    def _run(self):
        leaves = []
        for stored, grad in zip(self.leaves, self.grads):
            value = load(stored)
            if isinstance(value, Tensor):
                value = value.detach()
                value = value.clone() if self.clone else value
                value.requires_grad_(grad)
            leaves.append(value)
        args, kwargs = pytree.tree_unflatten(leaves, self.treespec)
        saved: List[Tensor] = []

        def keep(t):
            saved.append(t)
            return t

        with contextlib.ExitStack() as stack:
            stack.enter_context(rerunning([self.module]))
            if self.rng is not None:
                stack.enter_context(torch.random.fork_rng(devices=self.rng[1]))
                torch.set_rng_state(self.rng[0])
                for device, state in zip(self.rng[1], self.rng[2]):
                    torch.cuda.set_rng_state(state, device)
            cache, devices = self.autocast
            for device, enabled, dtype in devices:  # as torch.utils.checkpoint restores it
                stack.enter_context(torch.autocast(device, dtype=dtype, enabled=enabled, cache_enabled=cache))
            stack.enter_context(unit_state.use_policy(self.policy))
            if self.before_rerun is not None:
                self.before_rerun(self.module)
            if self.wanted:  # its saved tensors are asked for: run it as the forward did, and collect them
                stack.enter_context(torch.enable_grad())
                stack.enter_context(torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t))
            else:  # only its output: no graph to build
                stack.enter_context(torch.no_grad())
            out = own_forward(self.module, args, kwargs)
        if self.wanted and len(saved) != self.n_saved:
            raise RuntimeError(
                f"recompute(): {type(self.module).__name__} saved {len(saved)} tensors when run again in the "
                f"backward but {self.n_saved} in the forward; its forward must not depend on state that changes "
                "between the two (turn recompute off for this model)"
            )
        outputs = [t.detach() for t in pytree.tree_leaves(out) if isinstance(t, Tensor)]
        return outputs, [t.detach() if i in self.wanted else None for i, t in enumerate(saved)]


def own_forward(module: nn.Module, args, kwargs):
    """The module's own (class) ``forward``: the wrapper in its ``__dict__`` and the hooks are bypassed.

    >>> import torch
    >>> from torch import nn
    >>> lin = nn.Linear(2, 1, bias=False)
    >>> _ = nn.init.ones_(lin.weight)
    >>> lin.forward = lambda x: "the wrapper"   # as recompute() wraps a module, in its __dict__
    >>> lin(torch.tensor([[1.0, 2.0]]))
    'the wrapper'
    >>> own_forward(lin, (torch.tensor([[1.0, 2.0]]),), {}).tolist()
    [[3.0]]
    """
    return type(module).forward(module, *args, **kwargs)


def _autocast_state(leaves: Sequence[Any]):
    """``(cache_enabled, [(device_type, enabled, dtype), ...])`` for the CPU and the inputs' devices."""
    types = sorted({"cpu"} | {t.device.type for t in leaves if isinstance(t, Tensor)})
    available = getattr(torch.amp, "is_autocast_available", lambda d: d in ("cpu", "cuda"))
    devices = [(d, torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in types if available(d)]
    return torch.is_autocast_cache_enabled(), devices


def _rng_state(leaves: Sequence[Any]):
    devices = sorted({t.device.index or 0 for t in leaves if isinstance(t, Tensor) and t.is_cuda})
    return torch.get_rng_state(), devices, [torch.cuda.get_rng_state(d) for d in devices]


class _Saver:
    """The pack hook inside one recorded call: how each tensor the call saves is kept."""

    def __init__(self, record: _Record, leaves: List[Any], stored: List[Any], module):
        self.record = record
        self.inputs = {id(t): (t, s, version(t)) for t, s in zip(leaves, stored) if isinstance(t, Tensor)}
        self.own = {id(t) for t in module.parameters(recurse=False)} | {id(t) for t in module.buffers(recurse=False)}
        self.kept_float = False

    def close(self) -> bool:
        self.record, self.inputs, self.own = None, {}, set()
        return self.kept_float

    def __call__(self, x: Tensor):
        record = self.record
        record.n_saved += 1
        hit = self.inputs.get(id(x))
        if hit is not None and hit[0] is x and hit[2] is not None and hit[2] == version(x):
            self.kept_float |= isinstance(hit[1], Tensor) and hit[1].is_floating_point()
            return hit[1]
        if x.is_floating_point() and unit_kind_of(x) is not None:
            return pack(x)
        ref = _reference(x) if x.is_floating_point() else None
        if ref is not None:
            return ref
        base = view_base(x)
        base = x if base is None else base
        if id(base) in self.own or base.grad_fn is None and base.requires_grad or x.numel() <= _SMALL:
            return x
        if x.dtype in (torch.bool, torch.uint8):
            return pack(x)
        record.wanted.add(record.n_saved - 1)
        return _Ref(record, "saved", record.n_saved - 1)


def record_call(module: nn.Module, args, kwargs, before_rerun: Optional[Callable[[nn.Module], None]] = None):
    """Run one leaf module call, storing its saved tensors per the module docstring.

    ``before_rerun(module)`` is called before the call runs again in the backward
    (:class:`~lightning_ftprop.memory.sharding.Owners` gathers FSDP2's sharded parameters there).

    Returns ``(output, kept_float)``: ``kept_float`` is True when the module is a threshold unit that
    kept a float ``z`` (its input came from no recorded call; :func:`~lightning_ftprop.memory.recompute`
    then re-runs the enclosing module as a checkpointed segment, or warns).

    >>> import torch
    >>> from torch import nn
    >>> import lightning_ftprop as ftp
    >>> _ = torch.manual_seed(0)
    >>> lin, unit = nn.Linear(3, 4), ftp.Sign(rule="soft_hinge")
    >>> x = torch.randn(2, 3)
    >>> z, _ = record_call(lin, (x,), {})
    >>> h, kept_float = record_call(unit, (z,), {})
    >>> kept_float                           # the unit's z is kept as "output 0 of the linear call"
    False
    >>> h.sum().backward()                   # runs the linear again to rebuild z
    >>> recorded, lin.weight.grad = lin.weight.grad, None
    >>> unit(lin(x)).sum().backward()        # plain autograd
    >>> torch.equal(recorded, lin.weight.grad)
    True
    >>> record_call(unit, (torch.randn(2, 4, requires_grad=True),), {})[1]   # z made by no recorded call
    True
    """
    leaves, treespec = pytree.tree_flatten((args, kwargs))
    tensors = [t for t in leaves if isinstance(t, Tensor)]
    keep = report.metered(store)
    stored = [keep(t) if isinstance(t, Tensor) else t for t in leaves]
    record = _Record(module, treespec, stored, [isinstance(t, Tensor) and t.requires_grad for t in leaves])
    record.before_rerun = before_rerun
    versions = [version(t) for t in tensors]
    rng = _rng_state(leaves)
    record.autocast = _autocast_state(leaves)
    saver = _Saver(record, leaves, stored, module)
    try:
        with torch.autograd.graph.saved_tensors_hooks(report.metered(saver), load):
            record.policy = unit_state.active_policy()  # as seen under the saver (see unit_state)
            out = own_forward(module, args, kwargs)
    finally:
        kept_float = saver.close()  # autograd may keep the hook: it must not keep the inputs
    after = _rng_state(leaves)
    if not torch.equal(after[0], rng[0]) or any(not torch.equal(a, b) for a, b in zip(after[2], rng[2])):
        record.rng = rng
    record.clone = any(v is None or version(t) != v for t, v in zip(tensors, versions))
    held = {id(t) for t in tensors}
    for index, t in enumerate(x for x in pytree.tree_leaves(out) if isinstance(x, Tensor)):
        if id(t) not in held and t.is_floating_point():  # an input given back keeps its own recipe
            state.outputs[t] = (record, index, version(t))
    return out, kept_float and isinstance(module, ThresholdUnit)


@contextlib.contextmanager
def rerunning(modules: Sequence[nn.Module]) -> Iterator[None]:
    """A re-run: wrappers step aside, and BatchNorm running statistics are restored afterwards.

    >>> import torch
    >>> from torch import nn
    >>> bn = nn.BatchNorm1d(2)
    >>> with rerunning([bn]):
    ...     _ = bn(torch.tensor([[0.0, 2.0], [2.0, 4.0]]))
    ...     print(bn.running_mean, unit_state.recomputing())
    tensor([0.1000, 0.3000]) True
    >>> bn.running_mean                      # restored: the re-run is not a second training step
    tensor([0., 0.])
    """
    norms = [
        m
        for module in modules
        for m in module.modules()
        if getattr(m, "track_running_stats", False) and m.training and hasattr(m, "running_mean")
    ]
    kept = [[b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None] for m in norms]
    state.plain += 1
    try:
        with unit_state.recomputation():
            yield
    finally:
        state.plain -= 1
        with torch.no_grad():
            for m, buffers in zip(norms, kept):
                live = [b for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
                for b, old in zip(live, buffers):
                    b.copy_(old)
