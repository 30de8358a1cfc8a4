"""Swap the activations of any ``nn.Module`` for threshold units, and swap them back.

    names = convert(model, "sign", "soft_hinge", exclude=["classifier.*"])
    ...train...
    revert(model)            # the original activations, the very same objects, are back

What is an activation is decided by the recognisers of :mod:`lightning_ftprop.recognise`: the
elementwise activations of ``torch.nn``, ``transformers`` and timm, and whatever you register with
:func:`~lightning_ftprop.recognise.register_activation`. Function-valued activations of standard
modules (``nn.TransformerEncoderLayer(activation="gelu")`` keeps ``F.gelu``) are swapped too, and
``revert`` puts the function back. Activations called inside ``forward`` (``F.relu(x)``) are not
reachable and cannot be swapped. A module instance registered under several names (or called twice,
as torchvision's ``BasicBlock.relu``) gets one shared unit, so the sharing survives.

Never a silent partial swap: ``convert`` sorts every activation-like place of the model into
*swapped*, *excluded* (the user kept it float: ``include``/``exclude`` or a ``None`` in ``mapping``)
and *left* (nothing matched it), and warns once, with an :class:`UnswappedActivationWarning`
naming every module it left in float.

Converting again is safe: a swapped unit remembers what it replaced, so a second ``convert`` with
the same arguments changes nothing, and one with other arguments re-swaps from the originals.

The arguments of a swap (patterns, mapping, activation names, unit arguments) are validated in
:mod:`lightning_ftprop.convert_args`, the one place for them.
"""

from __future__ import annotations

import fnmatch
import warnings
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from torch import nn

from lightning_ftprop import recognise
from lightning_ftprop.convert_args import ActivationTarget, Patterns, Target, checked_args, make_target, matcher
from lightning_ftprop.nn import ThresholdUnit
from lightning_ftprop.rules import DEFAULT_RULE, Rule

__all__ = [
    "convert",
    "revert",
    "threshold_units",
    "float_activations",
    "SwappedNames",
    "UnswappedActivationWarning",
]

_ORIGINAL = "_ftprop_original"  # attribute on a unit: the module or function it replaced (not a submodule)


class UnswappedActivationWarning(UserWarning):
    """``convert`` left activation-like modules in float that no recogniser or mapping key matched.

    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     _ = convert(nn.Sequential(nn.ReLU(), nn.GELU()), mapping={"ReLU": "sign"})
    >>> caught[0].category.__name__
    'UnswappedActivationWarning'
    """


class SwappedNames(list):
    """The qualified names that :func:`convert` swapped (a plain list), plus what it did not swap.

    Attributes:
        excluded: activations the user kept in float (``include``/``exclude``, or ``None`` in ``mapping``).
        left: activation-like modules or function slots that nothing matched; ``convert`` warned about them.

    >>> names = convert(nn.Sequential(nn.ReLU(), nn.Tanh()), exclude="1")
    >>> names, names.excluded, names.counts()
    (['0'], ['1'], {'swapped': 1, 'excluded': 1, 'left': 0})
    """

    def __init__(self, swapped: Iterable[str] = (), excluded: Iterable[str] = (), left: Iterable[str] = ()):
        super().__init__(swapped)
        self.excluded: List[str] = list(excluded)
        self.left: List[str] = list(left)

    def counts(self) -> Dict[str, int]:
        """``{"swapped": n, "excluded": n, "left": n}``."""
        return {"swapped": len(self), "excluded": len(self.excluded), "left": len(self.left)}


# --- the table and the walk -----------------------------------------------------------------------


class _Table:
    """Which activation goes where: exact class paths first, then predicates, in order."""

    def __init__(self, activation: ActivationTarget, mapping: Optional[Mapping]):
        self.paths: Dict[str, ActivationTarget] = {}
        self.predicates: List[Tuple[Callable[[nn.Module], bool], ActivationTarget]] = []
        if mapping is None:  # the registry as it is: a class path of a library version without it never matches
            items = [(fn or key, activation) for key, fn in recognise.recognisers()]
        else:
            items = [(matcher(key), target) for key, target in mapping.items()]
        for match, target in items:
            if isinstance(match, str):
                self.paths[match] = target
            else:
                self.predicates.append((match, target))

    def lookup(self, original: Any) -> Tuple[bool, ActivationTarget]:
        """``(found, target)`` for a module or an activation function; target None: keep it float."""
        if not isinstance(original, nn.Module):
            cls = recognise.ACTIVATION_FUNCTIONS.get(original)
            path = None if cls is None else recognise.class_path(cls)
            return (path in self.paths, self.paths.get(path))
        if next(iter(original.children()), None) is not None:
            return False, None
        path = recognise.class_path(type(original))
        if path in self.paths:
            return True, self.paths[path]
        for predicate, target in self.predicates:
            if predicate(original):
                return True, target
        return False, None

    def names(self) -> List[str]:
        return sorted(
            {p.rpartition(".")[2] for p, t in self.paths.items() if t is not None}
            | {getattr(f, "__name__", repr(f)) for f, t in self.predicates if t is not None}
        )


def _selected(qualname: str, include: Optional[List[str]], exclude: Optional[List[str]]) -> bool:
    if include is not None and not any(fnmatch.fnmatchcase(qualname, p) for p in include):
        return False
    return not (exclude and any(fnmatch.fnmatchcase(qualname, p) for p in exclude))


def _original(module: nn.Module) -> Any:
    """The module (or function) a unit replaced, or the module itself."""
    return module.__dict__.get(_ORIGINAL, module)


def _same_unit(old: nn.Module, new: nn.Module) -> bool:
    return (
        isinstance(old, ThresholdUnit)
        and type(old) is type(new)
        and old.config() == new.config()
        and old.rule is new.rule
    )


def _places(model: nn.Module) -> List[Tuple[str, nn.Module, str, Any]]:
    """``(qualified name, parent, attribute, original)`` for every child module and function slot.

    Listed before anything changes. ``named_children()`` would hide repeated children, so the
    parents' ``_modules`` are read directly.
    """
    places = []
    for parent_name, parent in model.named_modules(remove_duplicate=False):
        prefix = f"{parent_name}." if parent_name else ""
        for name, child in parent._modules.items():
            if child is not None:
                places.append((prefix + name, parent, name, _original(child)))
        for attr in recognise.function_slots(parent):
            places.append((prefix + attr, parent, attr, parent.__dict__[attr]))
    return places


def _sync_transformer_fast_path(parent: nn.Module, attr: str, value: Any) -> None:
    """Keep torch's fused Transformer fast path honest about a swapped ``activation``.

    ``nn.TransformerEncoderLayer`` records at construction whether its activation is ReLU (1) or
    GELU (2), as a module or as ``F.relu``/``F.gelu``; in eval mode without grad its fused kernel
    then computes that function itself and would ignore a threshold unit put in its place. Flag 0
    turns the fast path off.
    """
    if attr == "activation" and hasattr(parent, "activation_relu_or_gelu"):
        relu = value is nn.functional.relu or isinstance(value, nn.ReLU)
        gelu = value is nn.functional.gelu or isinstance(value, nn.GELU)
        parent.activation_relu_or_gelu = 1 if relu else 2 if gelu else 0


def _put(parent: nn.Module, attr: str, value: Any) -> None:
    """Set a child module or function slot; a function replaces a child module cleanly."""
    if not isinstance(value, nn.Module) and attr in parent._modules:
        delattr(parent, attr)
    setattr(parent, attr, value)
    _sync_transformer_fast_path(parent, attr, value)


def _describe(original: Any) -> str:
    if isinstance(original, nn.Module):
        return recognise.class_path(type(original))
    return f"function {getattr(original, '__module__', '')}.{getattr(original, '__name__', repr(original))}"


def _warn_left(left: List[Tuple[str, Any]]) -> None:
    kinds: Dict[str, List[str]] = {}
    for name, original in left:
        kinds.setdefault(_describe(original), []).append(name)
    listing = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in kinds.items())
    example = next((k for k in kinds if not k.startswith("function ")), "package.module.MyAct")
    warnings.warn(
        f"convert() left {len(left)} activation-like module(s) in float, matched by no recogniser or "
        f"mapping key: {listing}. To swap them, register the class "
        f"(lightning_ftprop.register_activation({example!r})) or add it to mapping "
        f"({{{example!r}: 'sign'}}); for a function, give the layer a module instead. To keep them in "
        "float without this warning, exclude them (exclude=[...]) or map their class to None.",
        UnswappedActivationWarning,
        stacklevel=3,
    )


def convert(
    model: nn.Module,
    activation: ActivationTarget = "sign",
    rule: Union[str, Rule] = DEFAULT_RULE,
    *,
    include: Patterns = None,
    exclude: Patterns = None,
    mapping: Optional[Mapping] = None,
    **unit_kwargs,
) -> SwappedNames:
    """Replace activation modules (and function-valued activations) of ``model`` in place with threshold units.

    Args:
        model: any ``nn.Module``.
        activation: ``"sign"``, ``"step"``, ``"qrelu"``, or a callable returning a module.
        rule: the learning rule of the new units (see :mod:`lightning_ftprop.rules`).
        include: glob patterns on qualified module names (``"features.*"``); only matches are swapped.
        exclude: glob patterns of names to leave alone; exclusion wins over inclusion.
        mapping: ``{key: target}``, replacing the default table (every registered recogniser ->
            ``activation``). Keys: ``nn.Module`` types, ``torch.nn`` class names (``"ReLU"``), dotted
            class paths, registered predicate names, or predicates. A target is a unit name, a pair
            ``(unit name, {argument: value})`` with that target's own unit arguments (``rule`` among
            them), a callable returning a module, or ``None`` to keep a class in float.
        **unit_kwargs: passed to every unit, e.g. ``weighted=False`` (a target's own arguments win).

    Returns:
        The qualified names of the swapped modules, in ``named_modules`` order, as a
        :class:`SwappedNames` list that also holds the ``excluded`` and ``left`` names.

    Warns:
        UnswappedActivationWarning: once, naming every activation-like module left in float.

    Raises:
        ValueError: a bad value (unknown activation, rule or mapping key; the message lists the
            valid ones), or a model with nothing to swap.
        TypeError: a bad type (model, patterns, mapping keys or values, unit keywords).

    >>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Tanh())
    >>> convert(model, "sign", "sste", mapping={"ReLU": "sign", "Tanh": ("qrelu", {"thresholds": 5})})
    ['1', '3']
    >>> model[1], model[3]
    (Sign(rule='sste', weighted=True), QReLU(thresholds=5, mode='single', rule='sste', weighted=True))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert() expects an nn.Module, got {type(model).__name__}")
    include_p, exclude_p, checked = checked_args(activation, rule, include, exclude, mapping, unit_kwargs)
    table = _Table(activation, checked)

    def build(target: Target) -> nn.Module:
        return make_target(target, rule, unit_kwargs, "")

    result = SwappedNames()
    left: List[Tuple[str, Any]] = []
    replacement: Dict[Any, nn.Module] = {}  # id(original module) or (id(parent), attr) -> new unit
    for qualname, parent, attr, original in _places(model):
        if isinstance(original, ThresholdUnit):
            continue  # a unit the user built: not ours to touch
        found, target = table.lookup(original)
        selected = _selected(qualname, include_p, exclude_p)
        current = parent._modules.get(attr)
        if found and target is not None and selected:
            key = id(original) if isinstance(original, nn.Module) else (id(parent), attr)
            if key not in replacement:
                unit = build(target)
                if _same_unit(current, unit):
                    unit = current  # already converted with these arguments: keep it
                unit.__dict__[_ORIGINAL] = original
                replacement[key] = unit
            _put(parent, attr, replacement[key])
            result.append(qualname)
            continue
        if current is not None and current is not original:
            _put(parent, attr, original)  # swapped by an earlier convert, kept float now
        if found or not isinstance(original, nn.Module) or recognise.looks_like_activation(original):
            if found or not selected:
                result.excluded.append(qualname)
            else:
                left.append((qualname, original))
    result.left = [name for name, _ in left]
    if not result:
        found_types = sorted({type(m).__name__ for m in model.modules()})
        raise ValueError(
            f"convert() found no activation to swap in {type(model).__name__} "
            f"(include={include!r}, exclude={exclude!r}); it swaps: "
            + (
                "the registered activations (lightning_ftprop.registered_activations())"
                if mapping is None
                else ", ".join(table.names())
            )
            + f"; the model has: {', '.join(found_types)}. Activations called as functions inside "
            "forward (F.relu(x)) cannot be swapped"
        )
    if left:
        _warn_left(left)
    return result


def revert(model: nn.Module) -> List[str]:
    """Put back the exact modules and functions that :func:`convert` replaced; returns the restored names.

    >>> model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    >>> relu = model[1]
    >>> convert(model)
    ['1']
    >>> revert(model), model[1] is relu
    (['1'], True)
    """
    restored: List[str] = []
    for parent_name, parent in list(model.named_modules(remove_duplicate=False)):
        for child_name, child in list(parent._modules.items()):  # named_children() hides repeats
            if child is not None and _ORIGINAL in child.__dict__:
                _put(parent, child_name, child.__dict__[_ORIGINAL])
                restored.append(f"{parent_name}.{child_name}" if parent_name else child_name)
    return restored


def threshold_units(model: nn.Module) -> List[Tuple[str, ThresholdUnit]]:
    """``(qualified name, unit)`` for every :class:`ThresholdUnit` in ``model``, shared ones once.

    >>> model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    >>> _ = convert(model, "step")
    >>> threshold_units(model)
    [('1', Step(rule='soft_hinge', weighted=True))]
    """
    return [(name, m) for name, m in model.named_modules() if isinstance(m, ThresholdUnit)]


def float_activations(model: nn.Module) -> List[Tuple[str, str]]:
    """``(qualified name, what it is)`` for every activation of ``model`` still in float.

    That is every recognised or activation-like module, and every function slot holding a
    function; threshold units are not float. Shared modules are listed once.

    >>> model = nn.Sequential(nn.ReLU(), nn.Tanh())
    >>> _ = convert(model, exclude="1")
    >>> float_activations(model)
    [('1', 'torch.nn.modules.activation.Tanh')]
    """
    found: List[Tuple[str, str]] = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if not isinstance(module, ThresholdUnit) and recognise.looks_like_activation(module):
            found.append((name, _describe(module)))
        for attr in recognise.function_slots(module):
            found.append((prefix + attr, _describe(module.__dict__[attr])))
    return found
