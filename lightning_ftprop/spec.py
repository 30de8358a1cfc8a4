"""The swap spec: a plain dict that says how a model's activations were converted.

:class:`~lightning_ftprop.FTPropCallback` and :class:`~lightning_ftprop.FTPropMixin` both describe
their swap with a spec and store it in checkpoints, so a resumed or reloaded model gets the same
threshold units before its weights load::

    spec = make_spec(activation="qrelu", rule="sste", unit_kwargs={"thresholds": 5})
    names = apply_spec(model, spec)              # lightning_ftprop.convert(model, ...) underneath
    spec_differences(checkpoint_spec, spec)      # [] when they agree

For example, sign units everywhere except the ``Tanh`` modules, which get 5-threshold qrelu units:

>>> from torch import nn
>>> spec = make_spec("sign", mapping={"ReLU": "sign", "Tanh": ("qrelu", {"thresholds": 5})})
>>> spec["mapping"]
{'ReLU': 'sign', 'Tanh': ['qrelu', {'thresholds': 5}]}
>>> model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Tanh())
>>> apply_spec(model, spec)
['1', '3']
>>> model[3]
QReLU(thresholds=5, mode='single', rule='soft_hinge', weighted=True)
>>> spec_differences(spec, spec_from_dict(dict(spec)))
[]

``memory`` is the training-memory mode (:mod:`lightning_ftprop.memory`); it changes no number, so
:func:`spec_differences` ignores it and a run may resume under another mode.

A spec has exactly the keys of :data:`SPEC_KEYS`. Its values are plain Python (str, bool, list,
dict, None), so it survives YAML, ``save_hyperparameters`` and ``torch.load(weights_only=True)``.
``mapping`` keys are ``torch.nn`` activation class names (``"ReLU"``), dotted class paths
(``"mypkg.layers.MyAct"``, matched by name, never imported) or names of registered predicates;
``nn.Module`` types are accepted and stored by name. A mapping value is a unit name, ``None``, or
a unit name with that target's own arguments, given as a pair ``("qrelu", {"thresholds": 5})`` and
stored as the list ``["qrelu", {"thresholds": 5}]`` (YAML and JSON have no tuples). Every argument is validated by the checks of
:mod:`lightning_ftprop.convert` and :func:`~lightning_ftprop.nn.make_unit`, so a bad value raises
the same exception here, in ``convert``, in the callback and in the mixin.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from torch import nn

from lightning_ftprop.convert import convert
from lightning_ftprop.convert_args import check_convert_args, check_mapping, check_patterns, mapping_key_name
from lightning_ftprop.memory import DEFAULT_MEMORY, check_memory
from lightning_ftprop.nn import check_unit_name
from lightning_ftprop.rules import DEFAULT_RULE, Rule

__all__ = ["SPEC_KEYS", "make_spec", "spec_from_dict", "apply_spec", "spec_differences"]

#: The keys of a spec, in order; ``make_spec`` takes them as arguments.
SPEC_KEYS = ("activation", "rule", "weighted", "include", "exclude", "mapping", "unit_kwargs", "memory")
_RUNTIME_KEYS = ("memory",)  # keys that change how a step runs, not what it computes


def _storable_target(target: Any) -> Any:
    """A mapping value as plain data: a ``(name, kwargs)`` pair becomes ``[name, kwargs]``."""
    if isinstance(target, (tuple, list)) and len(target) == 2 and isinstance(target[1], Mapping):
        return [target[0], dict(target[1])]
    return target


def _mapping(value: Optional[Mapping]) -> Optional[Dict[str, Any]]:
    mapping = check_mapping(value, allow_factory=False)
    if mapping is None:
        return None
    return {mapping_key_name(key): _storable_target(target) for key, target in mapping.items()}


def _convert_kwargs(spec: Mapping[str, Any]) -> Dict[str, Any]:
    """The keyword arguments of :func:`convert` (after ``model``) that a normalised spec stands for."""
    return dict(
        activation=spec["activation"],
        rule=spec["rule"],
        include=spec["include"],
        exclude=spec["exclude"],
        mapping=spec["mapping"],
        weighted=spec["weighted"],
        **spec["unit_kwargs"],
    )


def make_spec(
    activation: str = "sign",
    rule: Union[str, Rule] = DEFAULT_RULE,
    weighted: bool = True,
    include: Union[str, Sequence[str], None] = None,
    exclude: Union[str, Sequence[str], None] = None,
    mapping: Optional[Mapping] = None,
    unit_kwargs: Optional[Mapping[str, Any]] = None,
    memory: str = DEFAULT_MEMORY,
) -> Dict[str, Any]:
    """Validate the arguments of a swap and return them as a normalised spec.

    Args: as :func:`lightning_ftprop.convert`, except that ``activation`` must be a name (a spec must
    be storable), ``weighted`` is its own key and other unit arguments (qrelu's ``thresholds``, ``mode``)
    go in ``unit_kwargs``. ``memory`` is one of :data:`lightning_ftprop.memory.MEMORY_MODES`.

    Raises:
        ValueError: unknown activation, rule or mapping key, or bad unit argument values; the
            message lists what is allowed.
        TypeError: wrong argument types, or a unit argument the activation does not take.

    >>> make_spec("qrelu", "sste", unit_kwargs={"thresholds": 5}, memory="exact")
    {'activation': 'qrelu', 'rule': 'sste', 'weighted': True, 'include': None, 'exclude': None, 'mapping': None, 'unit_kwargs': {'thresholds': 5}, 'memory': 'exact'}
    """
    check_unit_name(activation)  # a name: a spec must be storable (convert takes unit factories)
    if unit_kwargs is None:
        unit_kwargs = {}
    if not isinstance(unit_kwargs, Mapping) or not all(isinstance(k, str) for k in unit_kwargs):
        raise TypeError(f"unit_kwargs must be a dict of keyword arguments, got {unit_kwargs!r}")
    if "weighted" in unit_kwargs or "rule" in unit_kwargs:
        raise ValueError("pass 'weighted' and 'rule' as their own arguments, not inside unit_kwargs")
    spec = {
        "activation": activation,
        "rule": rule.name if isinstance(rule, Rule) else rule,
        "weighted": weighted,
        "include": check_patterns(include, "include"),
        "exclude": check_patterns(exclude, "exclude"),
        "mapping": _mapping(mapping),
        "unit_kwargs": dict(unit_kwargs),
        "memory": check_memory(memory),
    }
    check_convert_args(**_convert_kwargs(spec))
    return spec


def spec_from_dict(values: Mapping[str, Any], extra_keys: Sequence[str] = ()) -> Dict[str, Any]:
    """Build a spec from a (possibly partial) dict; missing keys take :func:`make_spec`'s defaults.

    Keys in ``extra_keys`` are allowed and ignored (e.g. the logging options of the callback).

    Raises:
        ValueError: an unknown key (the message lists the allowed ones), or what :func:`make_spec` raises.

    >>> spec_from_dict({"activation": "step", "log_every_n_steps": 10}, extra_keys=["log_every_n_steps"])["activation"]
    'step'
    >>> spec_from_dict({"activaton": "step"})
    Traceback (most recent call last):
    ValueError: unknown ftprop spec key(s) 'activaton'; allowed keys: activation, rule, weighted, include, exclude, mapping, unit_kwargs, memory
    """
    if not isinstance(values, Mapping):
        raise TypeError(f"an ftprop spec must be a dict with keys from {', '.join(SPEC_KEYS)}, got {values!r}")
    unknown = sorted(set(values) - set(SPEC_KEYS) - set(extra_keys))
    if unknown:
        allowed = ", ".join((*SPEC_KEYS, *extra_keys))
        raise ValueError(f"unknown ftprop spec key(s) {', '.join(map(repr, unknown))}; allowed keys: {allowed}")
    return make_spec(**{k: v for k, v in values.items() if k in SPEC_KEYS})


def apply_spec(model: nn.Module, spec: Mapping[str, Any]) -> List[str]:
    """Convert ``model`` as ``spec`` says (idempotent); returns the swapped module names.

    Raises:
        ValueError: the model has nothing to swap (from :func:`lightning_ftprop.convert`).

    >>> from torch import nn
    >>> apply_spec(nn.Sequential(nn.Linear(2, 2), nn.GELU()), make_spec("qrelu", unit_kwargs={"thresholds": 5}))
    ['1']
    """
    return convert(model, **_convert_kwargs(spec))


def _plain(spec: Mapping[str, Any]) -> Dict[str, Any]:
    """``spec`` with its mapping's ``(name, kwargs)`` pairs as lists, as a stored spec holds them."""
    out = dict(spec)
    if isinstance(out.get("mapping"), Mapping):
        out["mapping"] = {key: _storable_target(target) for key, target in out["mapping"].items()}
    return out


def spec_differences(expected: Mapping[str, Any], found: Mapping[str, Any], runtime: bool = False) -> List[str]:
    """``"key: expected != found"`` for every key on which two specs disagree (``memory`` too with ``runtime``).

    >>> spec_differences({"rule": "sste", "memory": "exact"}, {"rule": "soft_hinge", "memory": "packed"})
    ["rule: 'sste' != 'soft_hinge'"]
    """
    expected, found = _plain(expected), _plain(found)
    return [
        f"{key}: {expected.get(key)!r} != {found.get(key)!r}"
        for key in SPEC_KEYS
        if (runtime or key not in _RUNTIME_KEYS) and expected.get(key) != found.get(key)
    ]
