"""Three messages printed around every run that say nothing about the user's run, filtered precisely.

* Lightning 2.6 on torch >= 2.10 warns, on every fit, that ``isinstance(treespec, LeafSpec)`` is
  deprecated (a FutureWarning about Lightning's own code).
* Lightning logs a "Tip" advertising the litlogger package when a Trainer builds its default logger.
* torchdata's ``StatefulDataLoader`` (the data modules' loaders) warns, every epoch, that its own call of
  ``torch.set_vital`` is deprecated (a UserWarning about torchdata's code).

Nothing else is filtered; ``lightning-ftprop`` (the demo and fit/validate/test) calls
:func:`silence_lightning_noise` before it builds a Trainer.
"""

from __future__ import annotations

import logging
import warnings

__all__ = ["silence_lightning_noise"]

_LEAFSPEC = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
_SET_VITAL = r"'set_vital' is deprecated"
_TIP_LOGGER = "lightning.pytorch.utilities.rank_zero"


class _DropLitLoggerTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("Tip:" in message and "litlogger" in message)


def silence_lightning_noise() -> None:
    """Hide the LeafSpec FutureWarning, torchdata's set_vital UserWarning and the litlogger tip (idempotent)."""
    warnings.filterwarnings("ignore", message=_LEAFSPEC, category=FutureWarning)
    warnings.filterwarnings("ignore", message=_SET_VITAL, category=UserWarning)
    logger = logging.getLogger(_TIP_LOGGER)
    if not any(isinstance(f, _DropLitLoggerTip) for f in logger.filters):
        logger.addFilter(_DropLitLoggerTip())
