"""How the paper's networks get their activations: a float network first, threshold units from a spec.

Every network is built as a float network, with ``nn.ReLU`` (or ``nn.Hardtanh(0, 1)`` for the
saturated-ReLU baseline) after each hidden layer. A threshold activation (``sign``, ``step``,
``qrelu``) is then put in by :func:`lightning_ftprop.spec.apply_spec`, the path that
:class:`~lightning_ftprop.FTPropCallback` and :class:`~lightning_ftprop.FTPropMixin` use too::

    make_float_activation("relu")            -> nn.ReLU()
    make_float_activation("saturated_relu")  -> nn.Hardtanh(0, 1)    min(max(z, 0), 1)
    make_float_activation("sign")            -> nn.ReLU()            (swapped afterwards)
    unit_spec("qrelu", "sste", thresholds=5)    -> the spec that swaps every ReLU for QReLU(thresholds=5, rule="sste")

Threshold units have no parameters, so a network gets the same random weights for every activation.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Dict, Optional, Tuple, Union

from torch import nn

from lightning_ftprop.nn import UNIT_CLASSES
from lightning_ftprop.rules import DEFAULT_RULE, Rule
from lightning_ftprop.spec import apply_spec, make_spec

__all__ = [
    "FLOAT_ACTIVATION_NAMES",
    "NETWORK_ACTIVATION_NAMES",
    "check_network_activation",
    "make_float_activation",
    "paper_network",
    "to_threshold",
    "unit_spec",
]

#: The full-precision baselines: the networks keep these activations.
FLOAT_ACTIVATION_NAMES: Tuple[str, ...] = ("relu", "saturated_relu")
#: Every ``activation=`` value the networks accept: the float baselines and the threshold units.
NETWORK_ACTIVATION_NAMES: Tuple[str, ...] = (*FLOAT_ACTIVATION_NAMES, *UNIT_CLASSES)


def check_network_activation(activation: str) -> str:
    """Return ``activation`` if it is in :data:`NETWORK_ACTIVATION_NAMES`; raise ValueError otherwise.

    (Threshold unit names alone are checked by :func:`lightning_ftprop.nn.check_unit_name`.)

    >>> check_network_activation("saturated_relu")
    'saturated_relu'
    """
    if activation not in NETWORK_ACTIVATION_NAMES:
        raise ValueError(
            f"unknown activation {activation!r}; valid activations are: {', '.join(NETWORK_ACTIVATION_NAMES)}"
        )
    return activation


def make_float_activation(activation: str = "relu") -> nn.Module:
    """A fresh float activation module: ``Hardtanh(0, 1)`` for ``saturated_relu``, ``ReLU`` for all others.

    (Not to be confused with :func:`lightning_ftprop.float_activations`, which lists the activations
    of a model still in float.)

    >>> make_float_activation("saturated_relu")
    Hardtanh(min_val=0.0, max_val=1.0, inplace=True)
    """
    check_network_activation(activation)
    if activation == "saturated_relu":
        return nn.Hardtanh(0.0, 1.0, inplace=True)
    return nn.ReLU(inplace=True)


def unit_spec(
    activation: str, rule: Union[str, Rule] = DEFAULT_RULE, weighted: bool = True, **unit_kwargs: Any
) -> Optional[Dict[str, Any]]:
    """The spec that swaps a float network's activations for ``activation`` units; None for a float baseline.

    ``rule``, ``weighted`` and ``unit_kwargs`` (qrelu's ``thresholds``, ``mode``; ``saved``) matter only for
    threshold units; a float baseline ignores them.

    Example:
        >>> unit_spec("qrelu", "sste", thresholds=5)["unit_kwargs"]
        {'thresholds': 5}
        >>> unit_spec("relu") is None  # a float baseline swaps nothing
        True
    """
    check_network_activation(activation)
    if activation in FLOAT_ACTIVATION_NAMES:
        return None
    return make_spec(activation, rule, weighted, unit_kwargs=unit_kwargs)


def to_threshold(net: nn.Module, activation: str, rule: Union[str, Rule], **unit_kwargs: Any) -> nn.Module:
    """Swap the float ``net``'s activations for ``activation`` units (nothing for a float baseline); returns ``net``.

    Example:
        >>> from torch import nn
        >>> to_threshold(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), "sign", "sste")
        Sequential(
          (0): Linear(in_features=4, out_features=4, bias=True)
          (1): Sign(rule='sste', weighted=True)
        )
    """
    spec = unit_spec(activation, rule, **unit_kwargs)
    if spec is not None:
        apply_spec(net, spec)
    return net


def paper_network(build_float: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Turn ``build_float(act, **shape)`` into ``network(activation, rule, **shape, **unit_kwargs)``.

    ``build_float`` calls ``act()`` for every hidden activation. The network is built with
    :func:`make_float_activation`, then :func:`to_threshold` swaps in the units; keyword arguments that
    ``build_float`` does not take (``thresholds``, ``mode``, ``weighted``, ``saved``) go to the units.

    Example:
        >>> from torch import nn
        >>> @paper_network
        ... def tiny(act, width=8):
        ...     return nn.Sequential(nn.Linear(4, width), act(), nn.Linear(width, 2))
        >>> tiny("sign", "sste", width=3)
        Sequential(
          (0): Linear(in_features=4, out_features=3, bias=True)
          (1): Sign(rule='sste', weighted=True)
          (2): Linear(in_features=3, out_features=2, bias=True)
        )
    """
    own = [p for p in inspect.signature(build_float).parameters.values() if p.name != "act"]
    shape_names = {p.name for p in own}

    @functools.wraps(build_float)
    def network(activation: str = "relu", rule: Union[str, Rule] = DEFAULT_RULE, **kwargs: Any) -> nn.Module:
        check_network_activation(activation)
        shape = {k: kwargs.pop(k) for k in list(kwargs) if k in shape_names}
        net = build_float(functools.partial(make_float_activation, activation), **shape)
        return to_threshold(net, activation, rule, **kwargs)

    head = [
        inspect.Parameter("activation", inspect.Parameter.POSITIONAL_OR_KEYWORD, default="relu", annotation=str),
        inspect.Parameter("rule", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=DEFAULT_RULE),
    ]
    tail = [inspect.Parameter("unit_kwargs", inspect.Parameter.VAR_KEYWORD)]
    shape_params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
    network.__signature__ = inspect.Signature(head + shape_params + tail)  # what help() shows
    return network
