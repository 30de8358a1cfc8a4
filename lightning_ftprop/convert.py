"""Swap the activations of any ``nn.Module`` for threshold units, and swap them back.

    names = convert(model, "sign", "soft_hinge", exclude=["classifier.*"])
    ...train...
    revert(model)            # the original activation modules, the very same objects, are back

``convert`` looks at every activation *module* (``nn.ReLU``, ``nn.GELU``, ...; see
:data:`DEFAULT_ACTIVATIONS`). Activations called as functions inside ``forward`` (``F.relu(x)``) are
not modules and cannot be swapped. A module instance registered under several names (or called
twice, as torchvision's ``BasicBlock.relu``) gets one shared unit, so the sharing survives.

Converting again is safe: a swapped unit remembers the module it replaced, so a second ``convert``
with the same arguments changes nothing, and one with other arguments re-swaps from the originals.
"""

from __future__ import annotations

import fnmatch
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Type, Union

from torch import nn

from lightning_ftprop.nn import ACTIVATIONS, ThresholdUnit, make_unit
from lightning_ftprop.rules import DEFAULT_RULE, Rule, get_rule

__all__ = ["convert", "revert", "threshold_units", "check_convert_args", "activation_type_names", "DEFAULT_ACTIVATIONS"]

#: The activation module types that :func:`convert` swaps by default.
DEFAULT_ACTIVATIONS: tuple = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.Hardtanh,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardsigmoid,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Mish,
    nn.Softplus,
    nn.Softsign,
    nn.Tanhshrink,
)

_ORIGINAL = "_ftprop_original"  # attribute on a unit: the module it replaced (not a submodule)

ActivationSpec = Union[str, Callable[[], nn.Module], None]
Patterns = Union[str, Sequence[str], None]


def _activation_types() -> Dict[str, Type[nn.Module]]:
    """Every activation class of ``torch.nn`` by name: the valid string keys of ``mapping``."""
    import torch.nn.modules.activation as act

    return {
        name: cls
        for name, cls in vars(act).items()
        if isinstance(cls, type)
        and issubclass(cls, nn.Module)
        and cls.__module__ == act.__name__
        and name not in ("MultiheadAttention", "Softmax", "Softmin", "Softmax2d", "LogSoftmax")
    }


def _resolve_mapping(activation: ActivationSpec, mapping: Optional[Mapping]) -> Dict[type, ActivationSpec]:
    if mapping is None:
        return {cls: activation for cls in DEFAULT_ACTIVATIONS}
    if not isinstance(mapping, Mapping):
        raise TypeError(f"mapping must be a dict of activation type -> activation, got {type(mapping).__name__}")
    known = _activation_types()
    resolved: Dict[type, ActivationSpec] = {}
    for key, value in mapping.items():
        if isinstance(key, str):
            if key not in known:
                raise ValueError(
                    f"unknown mapping key {key!r}; valid keys are nn.Module types or: {', '.join(sorted(known))}"
                )
            key = known[key]
        elif not (isinstance(key, type) and issubclass(key, nn.Module)):
            raise ValueError(
                f"mapping key {key!r} is not an nn.Module type; valid string keys are: {', '.join(sorted(known))}"
            )
        _check_activation(value, allow_none=True)
        resolved[key] = value
    return resolved


def _check_activation(activation: ActivationSpec, allow_none: bool = False) -> None:
    if activation is None and allow_none:
        return
    if isinstance(activation, str):
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid activations are: {', '.join(ACTIVATIONS)}")
    elif not callable(activation):
        raise ValueError(
            f"activation must be one of {', '.join(ACTIVATIONS)} or a callable returning a module, got {activation!r}"
        )


def activation_type_names() -> List[str]:
    """The ``torch.nn`` activation class names accepted as string keys of ``mapping``."""
    return sorted(_activation_types())


def check_convert_args(
    activation: ActivationSpec = "sign",
    rule: Union[str, Rule] = DEFAULT_RULE,
    *,
    include: Patterns = None,
    exclude: Patterns = None,
    mapping: Optional[Mapping] = None,
    **unit_kwargs,
) -> None:
    """Raise what :func:`convert` would raise for these arguments, without touching a model.

    Every string activation named (``activation`` and the values of ``mapping``) is built once with
    ``unit_kwargs``, so bad unit arguments (``steps=1`` for qrelu, a misspelt keyword) fail here too.

    Raises:
        ValueError: unknown activation, rule or mapping key; bad unit argument values.
        TypeError: bad pattern types, or a keyword argument that the unit does not take.
    """
    _check_activation(activation)
    get_rule(rule)
    table = _resolve_mapping(activation, mapping)
    _as_patterns(include, "include")
    _as_patterns(exclude, "exclude")
    for target in sorted({t for t in table.values() if isinstance(t, str)}):
        make_unit(target, rule, **unit_kwargs)  # raises for unit arguments the unit does not take


def _as_patterns(patterns: Patterns, name: str) -> Optional[List[str]]:
    if patterns is None:
        return None
    if isinstance(patterns, str):
        return [patterns]
    patterns = list(patterns)
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"{name} must be a glob pattern or a list of them, got {patterns!r}")
    return patterns


def _selected(qualname: str, include: Optional[List[str]], exclude: Optional[List[str]]) -> bool:
    if include is not None and not any(fnmatch.fnmatchcase(qualname, p) for p in include):
        return False
    return not (exclude and any(fnmatch.fnmatchcase(qualname, p) for p in exclude))


def _original(module: nn.Module) -> nn.Module:
    """The module a unit replaced, or the module itself."""
    return module.__dict__.get(_ORIGINAL, module)


def _same_unit(old: nn.Module, new: nn.Module) -> bool:
    return (
        isinstance(old, ThresholdUnit) and type(old) is type(new) and old.spec() == new.spec() and old.rule is new.rule
    )


def _sync_transformer_fast_path(parent: nn.Module, child_name: str, module: nn.Module) -> None:
    """Keep torch's fused Transformer fast path honest about a swapped ``activation``.

    ``nn.TransformerEncoderLayer`` records at construction whether its activation is ReLU (1) or
    GELU (2); in eval mode without grad its fused kernel then computes that function itself and
    would ignore a threshold unit put in its place. Flag 0 turns the fast path off.
    """
    if child_name == "activation" and hasattr(parent, "activation_relu_or_gelu"):
        parent.activation_relu_or_gelu = 1 if isinstance(module, nn.ReLU) else 2 if isinstance(module, nn.GELU) else 0


def convert(
    model: nn.Module,
    activation: ActivationSpec = "sign",
    rule: Union[str, Rule] = DEFAULT_RULE,
    *,
    include: Patterns = None,
    exclude: Patterns = None,
    mapping: Optional[Mapping] = None,
    **unit_kwargs,
) -> List[str]:
    """Replace activation modules of ``model`` in place with threshold units.

    Args:
        model: any ``nn.Module``.
        activation: ``"sign"``, ``"step"``, ``"qrelu"``, or a callable returning a module.
        rule: the learning rule of the new units (see :mod:`lightning_ftprop.rules`).
        include: glob patterns on qualified module names (``"features.*"``); only matches are swapped.
        exclude: glob patterns of names to leave alone; exclusion wins over inclusion.
        mapping: ``{activation type or nn class name: activation or None}``; replaces the default
            table (every type in :data:`DEFAULT_ACTIVATIONS` -> ``activation``). ``None`` skips a type.
        **unit_kwargs: passed to the unit, e.g. ``weighted=False`` or ``steps=5`` for qrelu.

    Returns:
        The qualified names of the swapped modules, in ``named_modules`` order.

    Raises:
        ValueError: unknown activation, rule or mapping key (the message lists the valid ones), or
            a model with nothing to swap.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert() expects an nn.Module, got {type(model).__name__}")
    _check_activation(activation)
    get_rule(rule)
    table = _resolve_mapping(activation, mapping)
    include_p, exclude_p = _as_patterns(include, "include"), _as_patterns(exclude, "exclude")

    def build(target: ActivationSpec) -> nn.Module:
        if isinstance(target, str):
            return make_unit(target, rule, **unit_kwargs)
        return target()

    swapped: List[str] = []
    replacement: Dict[int, nn.Module] = {}  # id(original) -> new unit, so shared modules stay shared
    for parent_name, parent in list(model.named_modules(remove_duplicate=False)):
        for child_name, child in list(parent._modules.items()):  # named_children() hides repeats
            qualname = f"{parent_name}.{child_name}" if parent_name else child_name
            if child is None:
                continue
            original = _original(child)
            target = table.get(type(original), None)
            if target is None or not _selected(qualname, include_p, exclude_p):
                continue
            if id(original) not in replacement:
                unit = build(target)
                if _same_unit(child, unit):
                    unit = child  # already converted with these arguments: keep it
                unit.__dict__[_ORIGINAL] = original
                replacement[id(original)] = unit
            setattr(parent, child_name, replacement[id(original)])
            _sync_transformer_fast_path(parent, child_name, replacement[id(original)])
            swapped.append(qualname)
    if not swapped:
        found = sorted({type(m).__name__ for m in model.modules()})
        raise ValueError(
            f"convert() found no activation to swap in {type(model).__name__} "
            f"(include={include!r}, exclude={exclude!r}); it swaps modules of these types: "
            f"{', '.join(sorted(t.__name__ for t in table))}; the model has: {', '.join(found)}"
        )
    return swapped


def revert(model: nn.Module) -> List[str]:
    """Put back the exact modules that :func:`convert` replaced; returns the restored names."""
    restored: List[str] = []
    for parent_name, parent in list(model.named_modules(remove_duplicate=False)):
        for child_name, child in list(parent._modules.items()):  # named_children() hides repeats
            if child is not None and _ORIGINAL in child.__dict__:
                setattr(parent, child_name, child.__dict__[_ORIGINAL])
                _sync_transformer_fast_path(parent, child_name, child.__dict__[_ORIGINAL])
                restored.append(f"{parent_name}.{child_name}" if parent_name else child_name)
    return restored


def threshold_units(model: nn.Module) -> Iterable[tuple]:
    """``(qualified name, unit)`` for every :class:`ThresholdUnit` in ``model``, shared ones once."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, ThresholdUnit)]
