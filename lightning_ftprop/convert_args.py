"""The arguments of a swap, validated in one place: patterns, mapping keys and values, unit arguments.

:func:`lightning_ftprop.convert` and :mod:`lightning_ftprop.spec` call these checks; nothing else
validates a swap's arguments. A bad value raises with the value and what is allowed:

>>> check_convert_args("sign", "soft_hinge", mapping={"ReLU": "relu"})
Traceback (most recent call last):
...
ValueError: unknown activation 'relu'; valid activations are: sign, step, qrelu
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from torch import nn

from lightning_ftprop import recognise
from lightning_ftprop.kinds import kind_names
from lightning_ftprop.nn import check_unit_name, make_unit
from lightning_ftprop.rules import Rule, get_rule

__all__ = ["check_convert_args", "check_patterns", "check_mapping", "mapping_key_name"]

ActivationTarget = Union[str, Callable[[], nn.Module], None]
Patterns = Union[str, Sequence[str], None]
Matcher = Union[str, Callable[[nn.Module], bool]]  # a class path, or a predicate on leaf modules


def check_patterns(patterns: Patterns, name: str) -> Optional[List[str]]:
    """Validate ``include``/``exclude``: None, a glob pattern, or a list of them; returns a list or None.

    Raises:
        TypeError: anything else.

    >>> check_patterns("layer4.*", "exclude")
    ['layer4.*']
    """
    if patterns is None:
        return None
    if isinstance(patterns, str):
        return [patterns]
    if isinstance(patterns, (list, tuple)) and all(isinstance(p, str) for p in patterns):
        return list(patterns)
    raise TypeError(f"{name} must be None, a glob pattern or a list of them, got {patterns!r}")


def short_names() -> str:
    return ", ".join(sorted(recognise.torch_activation_names()))


def matcher(key: Any) -> Matcher:
    """Resolve one mapping key to a class path or a predicate.

    Keys: an ``nn.Module`` type; a ``torch.nn`` class name (``"GELU"``, which wins over other
    classes of that name); the short name of exactly one registered class (``"NewGELUActivation"``);
    a dotted class path (``"transformers.activations.NewGELUActivation"``, never imported); the name
    of a registered predicate; or a predicate ``fn(module) -> bool`` (not storable in a spec).
    """
    if isinstance(key, type):
        if not issubclass(key, nn.Module):
            raise TypeError(f"mapping key {key!r} is a type but not an nn.Module subclass")
        return recognise.class_path(key)
    if isinstance(key, str):
        predicate = dict(recognise.recognisers()).get(key)
        if predicate is not None:
            return predicate
        if "." not in key:
            known = recognise.torch_activation_names()
            if key in known:
                return recognise.class_path(known[key])
            paths = [k for k, fn in recognise.recognisers() if fn is None and k.rpartition(".")[2] == key]
            if len(paths) == 1:  # the short name of one registered class: "NewGELUActivation"
                return paths[0]
            raise ValueError(
                f"unknown mapping key {key!r}"
                + (f" (ambiguous: {', '.join(paths)})" if paths else "")
                + "; use an nn.Module type, a dotted class path ('package.module.Class'), the short name "
                f"of one registered class, a registered predicate name, or one of: {short_names()}"
            )
        return recognise.check_class_path(key)
    if callable(key):
        return key
    raise TypeError(
        f"mapping keys must be nn.Module types, class names or paths, or predicates; got {key!r} ({type(key).__name__})"
    )


def mapping_key_name(key: Any) -> str:
    """A mapping key as a storable string: ``"ReLU"`` for ``torch.nn`` types, else the class path.

    Strings are validated and kept as given.

    Raises:
        TypeError: a key of the wrong type, or a predicate (give it a name with ``register_activation``).
        ValueError: an unknown or malformed name.

    >>> mapping_key_name(nn.GELU), mapping_key_name("mypkg.layers.MyAct")
    ('GELU', 'mypkg.layers.MyAct')
    """
    if isinstance(key, (type, str)):
        matcher(key)
        if isinstance(key, str):
            return key
        return key.__name__ if getattr(nn, key.__name__, None) is key else recognise.class_path(key)
    if callable(key):
        raise TypeError(
            f"mapping key {key!r} is a predicate, which a spec cannot store; register it with "
            "lightning_ftprop.register_activation(fn, name=...) and use the name"
        )
    return matcher(key)  # raises the TypeError


Target = Union[str, Tuple[str, Dict[str, Any]], Callable[[], nn.Module], None]  # a normalised mapping value


def check_target(activation: Any, where: str, allow_factory: bool = True, allow_none: bool = False) -> Target:
    """Validate one activation to swap in and return it normalised.

    Allowed: a unit name (``"sign"``); a unit name with that target's own arguments, as a pair
    ``("qrelu", {"thresholds": 5})`` or a two-element list (YAML has no tuples), returned as a tuple (a pair
    with no arguments becomes the plain name); a callable returning a module (if ``allow_factory``);
    ``None`` (if ``allow_none``). Only names are checked here; the arguments are checked when
    :func:`check_convert_args` builds each target once.
    """
    if activation is None and allow_none:
        return None
    if isinstance(activation, str):
        return check_unit_name(activation)
    if isinstance(activation, (tuple, list)) and allow_none:  # per-target arguments: mapping values only
        if (
            len(activation) == 2
            and isinstance(activation[0], str)
            and isinstance(activation[1], Mapping)
            and all(isinstance(k, str) for k in activation[1])
        ):
            name, kwargs = check_unit_name(activation[0]), dict(activation[1])
            return (name, kwargs) if kwargs else name
        raise TypeError(
            f"{where} must be a unit name or a pair (unit name, {{argument: value}}), such as "
            f"('qrelu', {{'thresholds': 5}}); got {activation!r}"
        )
    if allow_factory and callable(activation):
        return activation
    allowed = ", ".join(kind_names()) + (", a callable returning a module" if allow_factory else "")
    pair = ", a pair (unit name, {argument: value})" if allow_none else ""
    raise TypeError(f"{where} must be one of {allowed}{pair}{' or None' if allow_none else ''}; got {activation!r}")


def check_mapping(mapping: Optional[Mapping], allow_factory: bool = True) -> Optional[Dict[Any, Target]]:
    """Validate a ``mapping`` and return it as a dict, keys as given, values normalised.

    A value is ``None`` (keep that class in float), a unit name, a pair ``(unit name, {argument:
    value})`` carrying that target's own unit arguments (returned as a tuple), or a callable
    returning a module (if ``allow_factory``).

    Raises:
        TypeError: not a dict, a key or value of the wrong type.
        ValueError: an unknown key or activation name.

    >>> check_mapping({"ReLU": "sign", "Tanh": ["qrelu", {"thresholds": 5}], "GELU": None})
    {'ReLU': 'sign', 'Tanh': ('qrelu', {'thresholds': 5}), 'GELU': None}
    """
    if mapping is None:
        return None
    if not isinstance(mapping, Mapping):
        raise TypeError(f"mapping must be a dict of activation class -> activation or None, got {mapping!r}")
    checked = {}
    for key, target in mapping.items():
        matcher(key)
        checked[key] = check_target(target, f"mapping[{key!r}]", allow_factory=allow_factory, allow_none=True)
    return checked


def make_target(target: Target, rule: Union[str, Rule], unit_kwargs: Mapping[str, Any], where: str) -> nn.Module:
    """Build the module for one table value: a factory's module, or a unit with its arguments.

    A unit gets ``unit_kwargs`` (the arguments given for every target) updated with its own
    arguments from a ``(name, {argument: value})`` pair; its own ``rule`` wins over ``rule``.
    """
    if callable(target) and not isinstance(target, (str, tuple)):
        return target()
    name, own = (target, {}) if isinstance(target, str) else target
    own = dict(own)
    unit_rule = own.pop("rule", rule)
    try:
        return make_unit(name, unit_rule, **{**unit_kwargs, **own})
    except TypeError as err:
        shared = sorted(set(unit_kwargs) - set(own))
        hint = (
            f" (unit arguments given outside mapping, {', '.join(shared)}, go to every target; give one target "
            f"its own with a pair in mapping, e.g. {{'Tanh': ('qrelu', {{'thresholds': 5}})}})"
            if shared
            else ""
        )
        raise TypeError(f"{where} -> {name!r}: {err}{hint}") from None


def check_unit_kwargs(unit_kwargs: Mapping[str, Any]) -> None:
    if "unit_kwargs" in unit_kwargs:
        raise TypeError(
            "convert() takes unit arguments as keywords (convert(model, 'qrelu', thresholds=5)), not as "
            f"unit_kwargs={unit_kwargs['unit_kwargs']!r}; for one target's own arguments use a pair in "
            "mapping: mapping={'Tanh': ('qrelu', {'thresholds': 5})}"
        )


def check_convert_args(activation: ActivationTarget, rule: Union[str, Rule], **options) -> None:
    """Raise what :func:`convert` would raise for these arguments, without touching a model.

    ``options`` are :func:`convert`'s keyword arguments: ``include``, ``exclude``, ``mapping`` and the
    unit arguments.

    Every unit named (``activation`` and the values of ``mapping``, with their own arguments) is built
    once, so bad unit arguments (``thresholds=1`` for qrelu, a misspelt keyword) fail here too.

    Raises:
        ValueError: a bad value: unknown activation, rule or mapping key; bad unit argument values.
        TypeError: a bad type: patterns, mapping keys or values, or a keyword the unit does not take.

    >>> check_convert_args("sign", "soft_hinge", mapping={"Tanh": ("qrelu", {"thresholds": 5})})
    >>> check_convert_args("sign", "soft_hinge", thresholds=5)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    TypeError: activation -> 'sign': Sign does not take thresholds; its arguments are: rule, weighted, inplace, keep ...
    """
    include, exclude, mapping = (options.pop(key, None) for key in ("include", "exclude", "mapping"))
    checked_args(activation, rule, include, exclude, mapping, options)


def checked_args(
    activation: ActivationTarget,
    rule: Union[str, Rule],
    include: Patterns,
    exclude: Patterns,
    mapping: Optional[Mapping],
    unit_kwargs: Mapping[str, Any],
) -> Tuple[Optional[List[str]], Optional[List[str]], Optional[Dict[Any, Target]]]:
    """The one validation of :func:`convert`'s arguments; returns the normalised patterns and mapping."""
    check_unit_kwargs(unit_kwargs)
    check_target(activation, "activation")
    get_rule(rule)
    include_p, exclude_p = check_patterns(include, "include"), check_patterns(exclude, "exclude")
    checked = check_mapping(mapping)
    if checked is None:
        targets = [("activation", activation)]
    else:  # a mapping replaces the default table: ``activation`` is not used
        targets = [(f"mapping[{key!r}]", target) for key, target in checked.items()]
    for where, target in targets:
        if target is not None and not (callable(target) and not isinstance(target, (str, tuple))):
            make_target(target, rule, unit_kwargs, where)  # raises for unit arguments the unit does not take
    return include_p, exclude_p, checked
