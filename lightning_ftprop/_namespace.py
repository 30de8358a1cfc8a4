"""One Lightning namespace: this package is built on ``lightning.pytorch``, not ``pytorch_lightning``.

The two packages hold the same code under different names, so a ``pytorch_lightning.Trainer`` calls
a ``lightning.pytorch`` callback's hooks, yet ``isinstance`` checks across them fail and mixing them
breaks the CLI and checkpoints in confusing ways (Lightning issues #17485, #20628). We refuse early
with a message that says what to change.
"""

from __future__ import annotations

from typing import Any, Iterable

import lightning.pytorch as lp

_FIX = (
    "lightning_ftprop is built on the unified `lightning` package: import Trainer, LightningModule and "
    "callbacks from `lightning.pytorch` (e.g. `import lightning.pytorch as pl`), not from `pytorch_lightning`"
)


def _is_standalone(objects: Iterable[type]) -> bool:
    return any(cls.__module__.split(".")[0] == "pytorch_lightning" for cls in objects)


def check_class(cls: type, user: str) -> None:
    """Raise TypeError if ``cls`` derives from a ``pytorch_lightning`` class."""
    if _is_standalone(cls.__mro__):
        raise TypeError(f"{user}: {cls.__qualname__} derives from pytorch_lightning classes; {_FIX}")


def check_trainer(trainer: Any, pl_module: Any, user: str) -> None:
    """Raise TypeError unless ``trainer`` and ``pl_module`` come from ``lightning.pytorch``."""
    for obj, expected in ((trainer, lp.Trainer), (pl_module, lp.LightningModule)):
        if not isinstance(obj, expected):
            origin = type(obj).__module__
            raise TypeError(
                f"{user} got a {type(obj).__qualname__} from {origin!r}, which is not a "
                f"lightning.pytorch.{expected.__name__}; {_FIX}"
            )
