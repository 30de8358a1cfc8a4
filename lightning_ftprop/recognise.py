"""Which modules of a model are float activations: the registry that :func:`~lightning_ftprop.convert` swaps.

A *recogniser* says "this module is an activation". There are three kinds::

    register_activation(MyAct)                                  # a type: its exact class
    register_activation("mypkg.layers.MyAct")                   # a dotted class path, nothing is imported
    register_activation(lambda m: type(m).__name__.endswith("Act"), name="my_acts")   # a predicate

Types and class paths match a module's exact class (``type(m).__module__ + "." + type(m).__qualname__``),
not its subclasses; predicates are called on every leaf module (one without child modules). A module
with children is never an activation. The registry starts with the elementwise activations of
``torch.nn``, of ``transformers.activations`` and of timm (``timm.layers.activations``,
``timm.layers.activations_me``), the last two by class path, so building it imports neither library.

Some standard modules hold their activation as a *function*: ``nn.TransformerEncoderLayer`` and
``nn.TransformerDecoderLayer`` built with ``activation="relu"`` or ``"gelu"`` keep ``F.relu``/``F.gelu``
in their ``activation`` attribute. :data:`FUNCTION_SLOTS` names those attributes and
:data:`ACTIVATION_FUNCTIONS` maps each known function to the module class that computes the same
thing, so ``F.gelu`` is matched exactly as ``nn.GELU`` is.

:func:`looks_like_activation` is the wider net that catches what no recogniser knows: a
parameter-free leaf module whose class name reads like an activation (``...LU``, ``...Act``,
``Swish``, ``Sigmoid``, ``Tanh``, ...). ``convert`` warns about every such module it leaves in float.
"""

from __future__ import annotations

import re
from typing import Callable, Dict, List, Optional, Tuple, Type, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Recogniser",
    "register_activation",
    "unregister_activation",
    "registered_activations",
    "recognisers",
    "match_activation",
    "looks_like_activation",
    "class_path",
    "check_class_path",
    "torch_activation_names",
    "ACTIVATION_FUNCTIONS",
    "FUNCTION_SLOTS",
]

#: What :func:`register_activation` takes: a module class, a class path string, or a predicate on a module.
Recogniser = Union[Type[nn.Module], str, Callable[[nn.Module], bool]]

_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


def class_path(cls: type) -> str:
    """``"package.module.Class"``: the dotted path recognisers match on.

    Example:
        >>> from torch import nn
        >>> class_path(nn.ReLU)
        'torch.nn.modules.activation.ReLU'
    """
    return f"{cls.__module__}.{cls.__qualname__}"


def check_class_path(path: str) -> str:
    """Validate a dotted class path (``"pkg.module.Class"``) and return its canonical form.

    Nothing is imported. Where the module named by the path is already imported, the class must
    exist there, and an alias (``"torch.nn.ReLU"``) is turned into the class's own path
    (``"torch.nn.modules.activation.ReLU"``).

    Raises:
        TypeError: ``path`` is not a string.
        ValueError: ``path`` is not a dotted path, or names a missing or non-``nn.Module`` class.

    Example:
        >>> check_class_path("torch.nn.ReLU")  # an alias becomes the class's own path
        'torch.nn.modules.activation.ReLU'
    """
    import sys

    if not isinstance(path, str):
        raise TypeError(f"a class path must be a string like 'package.module.Class', got {type(path).__name__}")
    if not _PATH.fullmatch(path):
        raise ValueError(f"{path!r} is not a dotted class path like 'package.module.Class'")
    module_name, _, attr = path.rpartition(".")
    module = sys.modules.get(module_name)
    if module is None:
        return path
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"{path!r} names no nn.Module class: module {module_name!r} has no such class")
    return class_path(cls)


# --- the registry ------------------------------------------------------------------------------------

# key -> predicate, or None for a class path (the key itself); insertion order is match order.
_REGISTRY: Dict[str, Optional[Callable[[nn.Module], bool]]] = {}


def register_activation(recogniser: Recogniser, *, name: Optional[str] = None, overwrite: bool = False) -> str:
    """Register a recogniser of activation modules and return its key in the registry.

    Args:
        recogniser: an ``nn.Module`` subclass, a dotted class path (not imported), or a predicate
            ``fn(module) -> bool`` called on leaf modules.
        name: the key of a predicate (default: its ``__module__.__qualname__``); types and paths are
            keyed by their class path.
        overwrite: replace a predicate already registered under ``name``.

    Raises:
        TypeError: ``recogniser`` is none of the three kinds.
        ValueError: a malformed class path, or a predicate name already taken.

    Example:
        >>> from torch import nn
        >>> class Squash(nn.Module):  # x / (1 + |x|): an activation no recogniser knows yet
        ...     def forward(self, x):
        ...         return x / (1 + x.abs())
        >>> match_activation(Squash()) is None
        True
        >>> register_activation(Squash)
        '...Squash'
        >>> match_activation(Squash())  # convert() now swaps it too
        '...Squash'
        >>> unregister_activation(Squash)
    """
    if isinstance(recogniser, type):
        if not issubclass(recogniser, nn.Module):
            raise TypeError(f"an activation type must be an nn.Module subclass, got {recogniser!r}")
        key, predicate = class_path(recogniser), None
    elif isinstance(recogniser, str):
        key, predicate = check_class_path(recogniser), None
    elif callable(recogniser):
        key = name or f"{recogniser.__module__}.{getattr(recogniser, '__qualname__', type(recogniser).__name__)}"
        if not isinstance(key, str):
            raise TypeError(f"name must be a string, got {type(key).__name__}")
        if key in _REGISTRY and not overwrite:
            raise ValueError(f"an activation recogniser named {key!r} is already registered; pass overwrite=True")
        predicate = recogniser
    else:
        raise TypeError(
            "register_activation expects an nn.Module type, a dotted class path or a predicate "
            f"fn(module) -> bool, got {type(recogniser).__name__}"
        )
    _REGISTRY[key] = predicate
    return key


def unregister_activation(key: Union[str, type]) -> None:
    """Remove a recogniser by its key (or type).

    Raises:
        ValueError: nothing is registered under ``key``.

    Example:
        >>> register_activation(lambda m: type(m).__name__ == "MyAct", name="my_act")
        'my_act'
        >>> unregister_activation("my_act")
        >>> "my_act" in registered_activations()
        False
    """
    if isinstance(key, type):
        key = class_path(key)
    if key not in _REGISTRY:
        raise ValueError(f"no activation recogniser is registered as {key!r}; see registered_activations()")
    del _REGISTRY[key]


def registered_activations() -> List[str]:
    """The keys of every registered recogniser, in match order (class paths, then predicate names).

    Example:
        >>> keys = registered_activations()
        >>> keys[0], "torch.nn.modules.activation.GELU" in keys
        ('torch.nn.modules.activation.ReLU', True)
    """
    return list(_REGISTRY)


def recognisers() -> List[Tuple[str, Optional[Callable[[nn.Module], bool]]]]:
    """``(key, predicate)`` for every recogniser in match order; ``predicate`` is None for a class path.

    Example:
        >>> recognisers()[0]  # a class path has no predicate
        ('torch.nn.modules.activation.ReLU', None)
    """
    return list(_REGISTRY.items())


def _predicates() -> List[Tuple[str, Callable[[nn.Module], bool]]]:
    return [(key, fn) for key, fn in _REGISTRY.items() if fn is not None]


def match_activation(module: nn.Module) -> Optional[str]:
    """The key of the recogniser that matches ``module`` (its exact class first, then predicates), or None.

    Example:
        >>> from torch import nn
        >>> match_activation(nn.GELU()), match_activation(nn.Linear(2, 2))
        ('torch.nn.modules.activation.GELU', None)
    """
    if not isinstance(module, nn.Module) or next(iter(module.children()), None) is not None:
        return None
    path = class_path(type(module))
    if path in _REGISTRY and _REGISTRY[path] is None:
        return path
    for key, predicate in _predicates():
        if predicate(module):
            return key
    return None


# --- what looks like an activation -------------------------------------------------------------------

# Classes of torch.nn.modules.activation that are not elementwise: never swapped, never reported.
_NOT_ELEMENTWISE = (nn.GLU, nn.Softmax, nn.Softmin, nn.Softmax2d, nn.LogSoftmax, nn.MultiheadAttention)

# "...LU"/"...Act" as a CamelCase word (ReLU, GELUTanh, xIELU, MyAct), or a well-known activation word.
_NAME_HINT = re.compile(
    r"(?:LU|Lu|Act)(?![a-z])|(?i:relu|gelu|silu|swish|mish|sigmoid|tanh|softplus|softsign|shrink|activation)"
)


def looks_like_activation(module: nn.Module) -> bool:
    """True for a registered activation, or a parameter-free leaf module whose class name reads like one.

    The name test: ``LU`` or ``Act`` ending a CamelCase word, or one of relu, gelu, silu, swish,
    mish, sigmoid, tanh, softplus, softsign, shrink, activation (any case). Softmax, GLU and
    attention are not elementwise and never count.

    Example:
        >>> from torch import nn
        >>> looks_like_activation(nn.Hardswish()), looks_like_activation(nn.Softmax(dim=1))
        (True, False)
    """
    if isinstance(module, _NOT_ELEMENTWISE) or next(iter(module.children()), None) is not None:
        return False
    if match_activation(module) is not None:
        return True
    return next(iter(module.parameters()), None) is None and bool(_NAME_HINT.search(type(module).__name__))


def torch_activation_names() -> Dict[str, Type[nn.Module]]:
    """Every elementwise activation class of ``torch.nn`` by name: the short string keys of ``mapping``.

    Example:
        >>> names = torch_activation_names()
        >>> names["GELU"].__name__, "Softmax" in names
        ('GELU', False)
    """
    import torch.nn.modules.activation as act

    return {
        name: cls
        for name, cls in vars(act).items()
        if isinstance(cls, type)
        and issubclass(cls, nn.Module)
        and cls.__module__ == act.__name__
        and not issubclass(cls, _NOT_ELEMENTWISE)
    }


# --- function-valued activations ---------------------------------------------------------------------

#: Module classes that may hold their activation as a function, and the attribute that holds it.
FUNCTION_SLOTS: Dict[Type[nn.Module], Tuple[str, ...]] = {
    nn.TransformerEncoderLayer: ("activation",),
    nn.TransformerDecoderLayer: ("activation",),
}

#: Activation functions that ``convert`` recognises in a function slot, and the module class each
#: one stands for (a ``mapping`` key for that class also applies to the function).
ACTIVATION_FUNCTIONS: Dict[Callable, Type[nn.Module]] = {
    F.relu: nn.ReLU,
    torch.relu: nn.ReLU,
    F.gelu: nn.GELU,
    F.silu: nn.SiLU,
    F.elu: nn.ELU,
    F.leaky_relu: nn.LeakyReLU,
    F.mish: nn.Mish,
    F.hardswish: nn.Hardswish,
    torch.tanh: nn.Tanh,
    F.tanh: nn.Tanh,
    torch.sigmoid: nn.Sigmoid,
    F.sigmoid: nn.Sigmoid,
}


def function_slots(module: nn.Module) -> List[str]:
    """The attributes of ``module`` that hold its activation as a function (not as a module)."""
    return [
        attr
        for cls, attrs in FUNCTION_SLOTS.items()
        if isinstance(module, cls)
        for attr in attrs
        if callable(module.__dict__.get(attr)) and not isinstance(module.__dict__[attr], nn.Module)
    ]


# --- the default registry ----------------------------------------------------------------------------

_TORCH = (
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
    nn.Hardshrink,
    nn.Softshrink,
    nn.LogSigmoid,
    nn.Threshold,
)
_TRANSFORMERS = [
    f"transformers.activations.{name}"
    for name in (
        "GELUActivation",
        "NewGELUActivation",
        "FastGELUActivation",
        "QuickGELUActivation",
        "AccurateGELUActivation",
        "ClippedGELUActivation",
        "GELUTanh",
        "PytorchGELUTanh",
        "SiLUActivation",
        "MishActivation",
        "LaplaceActivation",
        "ReLUSquaredActivation",
        "SqrtSoftplusActivation",
        "XIELUActivation",
    )
] + [
    "transformers.models.bloom.modeling_bloom.BloomGelu",  # BLOOM's MLP activation, a class of its own
    "transformers.models.lxmert.modeling_lxmert.GeLU",  # LXMERT's visual answer head: gelu(x)
]  # not LinearActivation: it is the identity
_TIMM = [
    *(
        f"timm.layers.activations.{name}"
        for name in ("Swish", "Mish", "Sigmoid", "Tanh", "HardSwish", "HardSigmoid", "HardMish", "PReLU", "GELU")
    ),
    *(f"timm.layers.activations.{name}" for name in ("GELUTanh", "QuickGELU")),
    *(
        f"timm.layers.activations_me.{name}"
        for name in ("SwishMe", "MishMe", "HardSigmoidMe", "HardSwishMe", "HardMishMe")
    ),
]

for _cls in _TORCH:
    register_activation(_cls)
for _path in (*_TRANSFORMERS, *_TIMM):
    _REGISTRY[_path] = None  # unchecked: a library version without the class simply never matches it
