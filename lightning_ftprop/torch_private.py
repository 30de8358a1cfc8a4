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
* ``Tensor._version`` (has a weight changed in place since the forward, before casting it again?):
  autocast's low-precision weight copies are kept as they are.

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
