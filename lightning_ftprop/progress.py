"""Quiet logs off a terminal: one line per epoch in place of a progress bar.

Lightning's bars (``RichProgressBar`` when ``rich`` is installed, else ``TQDMProgressBar``) redraw
themselves many times a second. On a terminal that is what a user wants; written to a file, tqdm's
redraws pile up (``lightning-ftprop demo > log`` wrote 813 KB, 510 of its 544 lines bar updates).

:func:`progress_bar_for_output` picks the bar for where the output goes:

* output is a terminal -> ``None``: Lightning chooses its usual bar, nothing changes;
* anything else (a file, a pipe, a CI log) -> an :class:`EpochLineProgressBar`, which prints one
  line when each training epoch ends (after its validation), and one when a standalone
  validate/test/predict run ends.

``lightning-ftprop demo`` and ``lightning-ftprop fit/validate/test`` use it; in your own script::

    bar = progress_bar_for_output()
    trainer = pl.Trainer(callbacks=[bar] if bar else [])

Example:
    >>> import io
    >>> type(progress_bar_for_output(io.StringIO())).__name__  # a file or pipe: one line per epoch
    'EpochLineProgressBar'
    >>> EpochLineProgressBar.format_line("epoch 1/5", {"val/acc": 0.8531, "v_num": 0}, 12.34)
    'epoch 1/5: val/acc=0.8531 (12.3 s)'
"""

from __future__ import annotations

import sys
import time
from typing import Any, Mapping, Optional, TextIO

from lightning.pytorch.callbacks import ProgressBar

__all__ = ["EpochLineProgressBar", "progress_bar_for_output"]


class EpochLineProgressBar(ProgressBar):
    """A Lightning progress bar that prints one plain line per training epoch, and nothing per batch.

    The line holds the metrics that the module logged with ``prog_bar=True`` (the values a bar
    would show, less the last step's ``*_step`` values), the epoch's wall time, and is flushed at once so that ``tail -f`` follows it::

        epoch 2/5: train/loss_epoch=0.4123 val/acc=0.8531 val/loss=0.4012 (11.8 s)

    Like every Lightning progress bar it prints on global rank 0 only.

    Args:
        stream: where the lines go (default: ``sys.stdout`` at print time).

    Example:
        >>> import lightning.pytorch as pl
        >>> trainer = pl.Trainer(callbacks=[EpochLineProgressBar()], logger=False)
        >>> type(trainer.progress_bar_callback).__name__
        'EpochLineProgressBar'
    """

    def __init__(self, stream: Optional[TextIO] = None) -> None:
        super().__init__()
        self._stream = stream
        self._enabled = True
        self._started = 0.0

    # --- the ProgressBar protocol -------------------------------------------------------------------------
    @property
    def is_enabled(self) -> bool:
        """Whether lines are printed (False on ranks other than 0, or after :meth:`disable`)."""
        return self._enabled

    def disable(self) -> None:
        """Print nothing (Lightning calls this on ranks other than 0)."""
        self._enabled = False

    def enable(self) -> None:
        """Print again after :meth:`disable`."""
        self._enabled = True

    def print(self, *args: Any, **kwargs: Any) -> None:
        """Print a line to the stream, flushed at once, when enabled."""
        if self._enabled:
            print(*args, file=self._stream or sys.stdout, flush=True, **kwargs)

    # --- the lines --------------------------------------------------------------------------------------
    @staticmethod
    def format_line(prefix: str, metrics: Mapping[str, Any], seconds: float) -> str:
        """``"<prefix>: name=value ... (<seconds> s)"``, floats to 4 decimals, Lightning's ``v_num`` left out.

        Example:
            >>> EpochLineProgressBar.format_line("test", {"test/acc": 0.5, "n": 3}, 2.0)
            'test: test/acc=0.5000 n=3 (2.0 s)'
        """
        parts = [f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items() if k != "v_num"]
        return f"{prefix}: " + " ".join([*parts, f"({seconds:.1f} s)"])

    def _line(self, trainer: Any, pl_module: Any, prefix: str) -> None:
        metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if not k.endswith("_step")}
        self.print(self.format_line(prefix, dict(sorted(metrics.items())), time.perf_counter() - self._started))

    def _start(self, *_: Any) -> None:
        self._started = time.perf_counter()

    on_train_epoch_start = _start
    on_test_start = _start
    on_predict_start = _start

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        """Start the clock of a standalone ``validate`` run (inside ``fit`` the epoch's clock runs on)."""
        if trainer.state.fn == "validate":
            self._start()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """One line after each training epoch (its validation has run by then)."""
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        self._line(trainer, pl_module, f"epoch {trainer.current_epoch + 1}{epochs}")

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        """One line after a standalone ``validate`` run (validation inside ``fit`` is in the epoch line)."""
        if trainer.state.fn == "validate":
            self._line(trainer, pl_module, "validate")

    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        """One line after a ``test`` run."""
        self._line(trainer, pl_module, "test")

    def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
        """One line after a ``predict`` run."""
        self._line(trainer, pl_module, "predict")


def progress_bar_for_output(stream: Optional[TextIO] = None) -> Optional[EpochLineProgressBar]:
    """The progress bar for output going to ``stream`` (default ``sys.stdout``).

    Returns ``None`` when ``stream`` is a terminal (Lightning then picks its usual rich or tqdm bar),
    else an :class:`EpochLineProgressBar` writing to it.

    Example:
        >>> import io
        >>> progress_bar_for_output(io.StringIO()).is_enabled
        True
    """
    isatty = getattr(sys.stdout if stream is None else stream, "isatty", None)
    if callable(isatty) and isatty():
        return None
    return EpochLineProgressBar(stream)  # None: sys.stdout at print time
