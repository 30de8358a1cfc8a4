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

1. **Recorded calls** (every leaf module: conv, BatchNorm, linear, LayerNorm, pooling, dropout,
   the units; :mod:`~lightning_ftprop.memory.calls`). Each call keeps a recipe (module, inputs, RNG
   state), and a saved float tensor that a recorded call produced is stored as a reference to that
   call; the backward's first use of it runs the call again. So ``conv -> BN -> unit`` keeps the
   conv's input in bits and nothing else: BN's input and the unit's ``z`` are references.
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
(other than the RNG, BatchNorm statistics and the units' memory policy, which are handled) must read
the same in the backward. Under ``torch.compile`` the wrapped modules run as written (no recipes).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Iterator, List

import torch
from torch import Tensor, nn

from lightning_ftprop import unit_state
from lightning_ftprop.memory import calls, policy, report, sharding
from lightning_ftprop.memory.hooks import unit_kind_of
from lightning_ftprop.nn import ThresholdUnit

__all__ = ["recompute", "is_recomputed"]

_SEGMENTS = "_ftprop_segments"  # instance attribute of every module recompute() wraps: its _Role


# --- the wrappers ------------------------------------------------------------------------------------


class _Role:
    """What recompute() made of one module: a recorded ``leaf`` or a ``node`` that may become a segment."""

    def __init__(self, role: str, name: str, plan: _Plan):
        self.role, self.name, self.plan = role, name, plan
        self.segment = False


class _Plan:
    """Shared by the wrappers of one recompute() call."""

    def __init__(self, model: nn.Module):
        self.warned = False
        self.owners = sharding.Owners(model)  # FSDP2: re-runs gather the shards they use first


def _plain() -> bool:
    """Run modules as written: no gradient, inside a segment or a re-run, or under torch.compile."""
    return calls.state.plain > 0 or not torch.is_grad_enabled() or torch.compiler.is_compiling()


def _leaf_forward(self: nn.Module, *args, **kwargs):
    if _plain():
        return calls.own_forward(self, args, kwargs)
    out, uncovered = calls.record_call(self, args, kwargs, before_rerun=self.__dict__[_SEGMENTS].plan.owners.unshard)
    if uncovered and calls.state.depth:
        calls.state.uncovered.append(self.__dict__[_SEGMENTS].name)
    return out


def _segment_contexts(module: nn.Module):
    # Inside a segment the units keep z (it is recomputed anyway), in the forward and in the re-run alike,
    # so that both save the same tensors.
    return _inside_segment(), _segment_rerun(module)


@contextlib.contextmanager
def _inside_segment() -> Iterator[None]:
    calls.state.plain += 1
    try:
        with unit_state.float_state():
            yield
    finally:
        calls.state.plain -= 1


@contextlib.contextmanager
def _segment_rerun(module: nn.Module) -> Iterator[None]:
    with calls.rerunning([module]), unit_state.float_state():
        yield


#: The unit-state policy under recompute: ``sste`` keeps its 1-bit mask, any other ``z`` is referenced.
_mask_or_reference = policy.detached_state(
    "recompute re-runs the module call that made z (z is kept as a reference to it)"
)


@contextlib.contextmanager
def _outermost() -> Iterator[None]:
    """Around the outermost wrapped call: saved tensors go through :func:`calls.store`, and under
    :func:`~lightning_ftprop.memory.packed` the units follow :func:`_mask_or_reference`."""
    active = unit_state.active_policy()
    if active is policy.packed_state:
        active = _mask_or_reference
    store = report.metered(calls.store)
    with torch.autograd.graph.saved_tensors_hooks(store, calls.load), unit_state.use_policy(active):
        yield


def _node_forward(self: nn.Module, *args, **kwargs):
    role = self.__dict__[_SEGMENTS]
    forward = functools.partial(type(self).forward, self)
    if _plain():
        return forward(*args, **kwargs)
    outermost = calls.state.depth == 0
    calls.state.depth += 1
    try:
        with _outermost() if outermost else contextlib.nullcontext():
            if role.segment:
                return torch.utils.checkpoint.checkpoint(
                    forward,
                    *args,
                    use_reentrant=False,
                    context_fn=functools.partial(_segment_contexts, self),
                    **kwargs,
                )
            mark = len(calls.state.uncovered)
            out = forward(*args, **kwargs)
            if (
                len(calls.state.uncovered) > mark
                and isinstance(out, Tensor)
                and unit_kind_of(out) is not None
                and not outermost
            ):
                role.segment = True  # from the next call on
                del calls.state.uncovered[mark:]
            return out
    finally:
        calls.state.depth -= 1
        if outermost:
            uncovered, calls.state.uncovered = list(dict.fromkeys(calls.state.uncovered)), []
            if uncovered and not role.plan.warned:
                role.plan.warned = True
                warnings.warn(
                    f"recompute(): {len(uncovered)} threshold unit(s) keep their float input z un-recomputed (still "
                    "packed): no module call produced z unchanged and no module around them outputs unit values. "
                    f"Not covered: {', '.join(uncovered)}",
                    UserWarning,
                    stacklevel=3,
                )


class _Forward:
    """The instance ``forward`` recompute() gives a module; unlike a bound method it survives pickling
    (``torch.save(model)``) and ``copy.deepcopy`` binds it to the copy."""

    __slots__ = ("module", "node")

    def __init__(self, module: nn.Module, node: bool):
        self.module, self.node = module, node

    def __call__(self, *args, **kwargs):
        return (_node_forward if self.node else _leaf_forward)(self.module, *args, **kwargs)


def _has_units(module: nn.Module) -> bool:
    return any(isinstance(m, ThresholdUnit) for m in module.modules())


def recompute(model: nn.Module, enable: bool = True) -> List[str]:
    """Make ``model`` rebuild in the backward what it computed from threshold outputs (in place).

    See the module docstring for what is kept and what is rebuilt. ``recompute(model, enable=False)``
    undoes it; calling it again starts afresh. Only instance ``forward`` attributes change (every leaf
    module, the model and each module holding a unit get one): parameters, buffers and ``state_dict``
    keys stay as they are. Under ``torch.no_grad`` everything runs plainly.
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
    plan = _Plan(model)
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
        module.__dict__["forward"] = _Forward(module, forward is _node_forward)
    return units


def is_recomputed(model: nn.Module) -> bool:
    """Whether :func:`recompute` has prepared ``model`` (and not undone it).

    >>> from torch import nn
    >>> import lightning_ftprop as ftp
    >>> model = nn.Sequential(nn.Linear(2, 2), ftp.Sign())
    >>> _ = recompute(model); is_recomputed(model)
    True
    >>> _ = recompute(model, enable=False); is_recomputed(model)
    False
    """
    return _SEGMENTS in model.__dict__
