"""Renamed public names: the old name keeps working for one release and warns, naming the new one.

    from lightning_ftprop._deprecated import renamed
    check_activation_name = renamed(check_unit_name, "lightning_ftprop.nn.check_activation_name")

Calling the old name emits a :class:`DeprecationWarning` ("... is deprecated; use ... instead") and
then does exactly what the new name does.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable, Optional, TypeVar

__all__ = ["renamed", "warn_renamed", "thresholds_argument"]

F = TypeVar("F", bound=Callable)


def warn_renamed(old: str, new: str, stacklevel: int = 3) -> None:
    """Emit the DeprecationWarning of a renamed name or value: ``"<old> is deprecated; use <new> instead"``."""
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release; use {new} instead",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def renamed(new: F, old: str, new_module: str = "") -> F:
    """A callable named ``old`` (a dotted path, for the message) that warns, then calls ``new``.

    The message names ``new`` in ``old``'s module, or in ``new_module`` where it moved.

    >>> import warnings
    >>> def double(x):
    ...     return 2 * x
    >>> twice = renamed(double, "mypkg.twice")
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     twice(4)
    8
    >>> print(caught[0].message)
    mypkg.twice is deprecated and will be removed in the next release; use mypkg.double instead
    """
    module = new_module or old.rpartition(".")[0]
    new_path = f"{module}.{new.__name__}" if module else new.__name__

    @functools.wraps(new)
    def alias(*args, **kwargs):
        warn_renamed(old, new_path)
        return new(*args, **kwargs)

    alias.__doc__ = f"Deprecated alias of :func:`{new_path}` (it warns); use that instead."
    alias.__name__ = old.rpartition(".")[2]
    return alias  # type: ignore[return-value]


def thresholds_argument(thresholds: int, steps: Optional[int], where: str) -> int:
    """``thresholds``, or the value of the deprecated ``steps`` (which warns); both differing is an error."""
    if steps is None:
        return thresholds
    warn_renamed(f"{where}(steps=...)", f"{where}(thresholds=...)", stacklevel=4)
    if thresholds not in (3, steps):
        raise TypeError(
            f"{where}() got thresholds={thresholds!r} and its deprecated name steps={steps!r}; give thresholds only"
        )
    return steps
