"""Every private PyTorch API the package uses, in one place, each with a fallback and one warning.

Private names change between torch releases without notice. Each use goes through this module, which
looks the name up when asked; when it is gone, or raises, the caller takes its documented fallback and
:class:`PrivateAPIWarning` says so once per name (never a crash). The list, also in ``docs/memory.md``:

* ``torch._C._autograd._top_saved_tensors_default_hooks`` (is ``packed()``'s hook the innermost one?):
  units keep their float ``z`` under ``packed()`` (correct, less memory saved);
* autograd nodes' ``_saved_<name>`` attributes (the BatchNorm and max-pool state a unit's ``z`` is
  rebuilt from): the unit keeps ``z``;
* ``torch._C._current_graph_task_id`` (is a backward running? ``recompute`` refuses ``create_graph``):
  a re-run with grad mode on is taken for a double backward and refused, never wrong;
* ``torch._functorch.config.ban_recompute_used_far_apart`` (may a compiled graph recompute a residual
  unit's ``z``?): a compiled residual unit keeps its ``z``;
* ``Tensor._version`` (has a weight changed in place since the forward, before casting it again? has
  a module call's output changed since, under ``recompute``?): autocast's low-precision weight copies are
  kept as they are, and ``recompute`` keeps the tensors it would have referenced;
* ``Tensor._base`` (is a saved tensor a view of a module call's output?): ``recompute`` keeps such views;
* ``torch.utils._pytree`` (the arguments of a module call ``recompute`` runs again): a flattening of
  tuples, lists and dicts (other containers become leaves).

>>> import torch
>>> top = saved_tensors_top_hook()
>>> with torch.autograd.graph.saved_tensors_hooks(abs, abs):
...     top() is not None and top()[0] is abs
True
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional, Set

import torch

__all__ = [
    "PrivateAPIWarning",
    "saved_tensors_top_hook",
    "warn_changed",
    "saved_attribute",
    "in_backward",
    "functorch_config",
    "version",
    "view_base",
    "pytree",
]


class PrivateAPIWarning(UserWarning):
    """A private torch API the package uses has changed; a documented fallback is taken instead.

    >>> import warnings
    >>> warnings.simplefilter("ignore", PrivateAPIWarning)   # to silence it, knowing the fallback
    >>> warnings.resetwarnings()
    """


_WARNED: Set[str] = set()


def warn_changed(name: str, fallback: str, error: Optional[BaseException] = None) -> None:
    """Warn once per ``name`` that a private torch API is gone or failed, and which ``fallback`` runs.

    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as seen:
    ...     warnings.simplefilter("always")
    ...     warn_changed("torch._example", "units keep z")
    ...     warn_changed("torch._example", "units keep z")      # once per name
    >>> len(seen), str(seen[0].message).endswith("changed the private API torch._example; falling back: units keep z")
    (1, True)
    """
    if name in _WARNED:
        return
    _WARNED.add(name)
    why = f" ({type(error).__name__}: {error})" if error is not None else ""
    warnings.warn(
        f"torch {torch.__version__} changed the private API {name}{why}; falling back: {fallback}",
        PrivateAPIWarning,
        stacklevel=3,
    )


_TOP_HOOKS = "torch._C._autograd._top_saved_tensors_default_hooks"


def saved_tensors_top_hook() -> Optional[Callable[[], Optional[tuple]]]:
    """A function returning this thread's innermost ``(pack_hook, unpack_hook)`` (or None), or None if
    torch no longer has one (then :func:`warn_changed` has warned).

    >>> saved_tensors_top_hook()() is None   # no saved-tensor hooks are active
    True
    """
    fn = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    if fn is None:
        warn_changed(_TOP_HOOKS, "threshold units keep their float z under packed()")
        return None

    def top() -> Optional[tuple]:
        return fn(False)

    return top


def saved_attribute(node: Any, name: str) -> Any:
    """``node._saved_<name>``: what an autograd node saved. Raises AttributeError when the node has none
    (callers treat that as "cannot rebuild" and warn through :func:`warn_changed`).

    >>> import torch
    >>> z = torch.nn.BatchNorm1d(2)(torch.randn(4, 2, requires_grad=True))
    >>> saved_attribute(z.grad_fn, "eps")
    1e-05
    """
    return getattr(node, f"_saved_{name}")


def in_backward() -> bool:
    """Whether this thread is running an autograd backward now (True when torch can no longer say).

    >>> in_backward()
    False
    """
    fn = getattr(torch._C, "_current_graph_task_id", None)
    if fn is None:
        warn_changed("torch._C._current_graph_task_id", "any re-run with grad mode on counts as a double backward")
        return True
    return fn() != -1


def functorch_config():
    """``torch._functorch.config`` (AOTAutograd's partitioner options), or None when it is gone.

    >>> functorch_config() is not None
    True
    """
    try:
        import torch._functorch.config as config
    except ImportError as error:
        warn_changed("torch._functorch.config", "a compiled residual unit keeps its z", error)
        return None
    return config


def version(t: torch.Tensor) -> Optional[int]:
    """``t._version`` (bumped by every in-place change), or None when torch no longer has it.

    >>> t = torch.zeros(2)
    >>> before = version(t); _ = t.add_(1); version(t) == before + 1
    True
    """
    value = getattr(t, "_version", None)
    if value is None:
        warn_changed("Tensor._version", "recompute keeps the tensors it would reference; weight casts are kept")
    return value


def view_base(t: torch.Tensor) -> Optional[torch.Tensor]:
    """The tensor ``t`` is a view of (``t._base``), or None (not a view, or torch no longer says).

    >>> x = torch.zeros(4)
    >>> view_base(x[1:]) is x, view_base(x)
    (True, None)
    """
    if not hasattr(t, "_base"):
        warn_changed("Tensor._base", "recompute keeps views of module outputs as they are")
        return None
    return t._base


class _Leaves:
    """The part of ``torch.utils._pytree`` that ``recompute`` uses, for tuples, lists and dicts."""

    @staticmethod
    def tree_flatten(tree: Any):
        if isinstance(tree, (tuple, list)):
            parts = [_Leaves.tree_flatten(x) for x in tree]
            return [leaf for leaves, _ in parts for leaf in leaves], (type(tree), [spec for _, spec in parts])
        if isinstance(tree, dict):
            parts = [(key, _Leaves.tree_flatten(value)) for key, value in tree.items()]
            leaves = [leaf for _, (sub, _) in parts for leaf in sub]
            return leaves, (dict, [(key, spec) for key, (_, spec) in parts])
        return [tree], None

    @staticmethod
    def tree_unflatten(leaves, spec):
        leaves = list(leaves)

        def build(spec):
            if spec is None:
                return leaves.pop(0)
            kind, children = spec
            if kind is dict:
                return {key: build(child) for key, child in children}
            return kind(build(child) for child in children)

        return build(spec)

    @staticmethod
    def tree_leaves(tree: Any):
        return _Leaves.tree_flatten(tree)[0]


def pytree():
    """``torch.utils._pytree``, or, when it is gone, a flattening of tuples, lists and dicts.

    >>> leaves, spec = pytree().tree_flatten(((1, 2), {"a": 3}))
    >>> leaves, pytree().tree_unflatten(leaves, spec)
    ([1, 2, 3], ((1, 2), {'a': 3}))
    """
    try:
        from torch.utils import _pytree
    except ImportError as error:
        warn_changed("torch.utils._pytree", "module-call arguments flattened as tuples, lists and dicts", error)
        return _Leaves
    return _pytree
