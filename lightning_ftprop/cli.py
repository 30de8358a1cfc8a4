"""The ``lightning-ftprop`` command: LightningCLI for the paper's experiments, plus a demo.

    lightning-ftprop demo                                         # offline main job (see demo.py)
    lightning-ftprop configs                                      # list the shipped configs
    lightning-ftprop fit --config convnet4_cifar10_sign_soft_hinge
    lightning-ftprop fit --config resnet18_imagenet_sign_sste --data.data_dir=/data/imagenet --trainer.devices=8
    lightning-ftprop test --config convnet4_cifar10_relu --ckpt_path=best.ckpt
    lightning-ftprop config-path convnet8_cifar10_qrelu_sste      # the YAML file, to copy and edit
    lightning-ftprop export --ckpt_path best.ckpt --output model.onnx  # ONNX, BN folded (see lightning_ftprop/export/)

``fit``, ``validate`` and ``test`` are LightningCLI's subcommands: the model is
:class:`~lightning_ftprop.module.ImageClassifier` (``--model.*``), the data any LightningDataModule
(``--data.class_path`` / ``--data.*``), and every Trainer argument is ``--trainer.*``. ``--config``
takes a file path or the name of a shipped config (one per cell of the paper's Table 1).
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional, Sequence

__all__ = ["CONFIG_DIR", "available_configs", "resolve_config", "resolve_config_args", "FTPropCLI", "main"]  # noqa: F822 (lazy)

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")

_EXTRA_HELP = """\
lightning-ftprop: train hard-threshold networks with feasible target propagation (FTPROP).

extra subcommands:
  demo                 train convnet4 on the embedded Fashion-MNIST (ReLU, sign and qReLU; SSTE vs FTP-SH)
                       and write a results table and plot; see `lightning-ftprop demo --help`
  configs              list the shipped configs (one per cell of the paper's Table 1)
  config-path NAME     print the path of a shipped config
  export               write a checkpoint's network to ONNX (threshold units frozen, BatchNorm folded);
                       see `lightning-ftprop export --help`

`--config NAME` accepts a shipped config's name as well as a file path.
"""


def available_configs() -> List[str]:
    """The names of the shipped configs (file names without ``.yaml``), sorted.

    >>> len(available_configs())  # one per cell of the paper's Table 1
    30
    >>> [name for name in available_configs() if name.startswith("convnet4_cifar10_sign")]
    ['convnet4_cifar10_sign_soft_hinge', 'convnet4_cifar10_sign_sste']
    """
    if not os.path.isdir(CONFIG_DIR):
        return []
    return sorted(name[:-5] for name in os.listdir(CONFIG_DIR) if name.endswith(".yaml"))


def resolve_config(name: str) -> str:
    """The path of a config: an existing file is returned as is, a shipped config's name is resolved.

    Raises:
        ValueError: for anything else; the message lists the shipped config names.

    >>> import os
    >>> os.path.basename(resolve_config("convnet4_cifar10_relu"))  # with or without ".yaml"
    'convnet4_cifar10_relu.yaml'
    >>> resolve_config("convnet9_cifar10_relu")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown config 'convnet9_cifar10_relu': it is neither a file nor a shipped config. Shipped configs: ...
    """
    if os.path.isfile(name):
        return name
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    if stem in available_configs():
        return os.path.join(CONFIG_DIR, stem + ".yaml")
    raise ValueError(
        f"unknown config {name!r}: it is neither a file nor a shipped config. Shipped configs: "
        f"{', '.join(available_configs())}"
    )


def resolve_config_args(argv: Sequence[str]) -> List[str]:
    """``argv`` with every ``--config X`` / ``--config=X`` / ``-c X`` value passed through :func:`resolve_config`.

    >>> import os
    >>> argv = resolve_config_args(["fit", "-c", "convnet4_cifar10_relu", "--trainer.max_epochs=1"])
    >>> argv[:2], os.path.basename(argv[2]), argv[3:]
    (['fit', '-c'], 'convnet4_cifar10_relu.yaml', ['--trainer.max_epochs=1'])
    """
    out: List[str] = []
    expect_value = False
    for arg in argv:
        if expect_value:
            out.append(resolve_config(arg))
            expect_value = False
        elif arg in ("--config", "-c"):
            out.append(arg)
            expect_value = True
        elif arg.startswith("--config="):
            out.append("--config=" + resolve_config(arg[len("--config=") :]))
        else:
            out.append(arg)
    return out


def _cli_class():
    from lightning.pytorch import LightningDataModule
    from lightning.pytorch.cli import LightningCLI

    from lightning_ftprop.module import ImageClassifier

    class FTPropCLI(LightningCLI):
        """LightningCLI with :class:`ImageClassifier` as the model and any LightningDataModule as data.

        ``args`` are the command-line arguments (default: ``sys.argv``); a shipped config's name must
        go through :func:`resolve_config` first (``lightning-ftprop`` does that). ``run=False``
        builds the model, data and Trainer without running a subcommand:

        >>> from lightning_ftprop.cli import FTPropCLI, resolve_config
        >>> config = resolve_config("convnet4_fashion_mnist_sign_soft_hinge")
        >>> cli = FTPropCLI(["--config", config, "--trainer.max_epochs=1"], run=False)
        >>> type(cli.model).__name__, cli.model.hparams.ftprop, type(cli.datamodule).__name__
        ('ImageClassifier', {'activation': 'sign', 'rule': 'soft_hinge'}, 'EmbeddedFashionMNISTDataModule')
        >>> cli.trainer.max_epochs
        1
        """

        def __init__(self, args: Optional[Sequence[str]] = None, **kwargs):
            kwargs.setdefault("save_config_kwargs", {"overwrite": True})
            super().__init__(
                ImageClassifier,
                LightningDataModule,
                subclass_mode_data=True,
                args=None if args is None else list(args),
                **kwargs,
            )

        def instantiate_trainer(self, **kwargs):
            """The Trainer, with one line per epoch in place of a progress bar when stdout is not a terminal."""
            from lightning.pytorch.callbacks import ProgressBar

            from lightning_ftprop.progress import progress_bar_for_output

            config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
            listed = config.get("callbacks") or []
            listed = listed if isinstance(listed, list) else [listed]
            bar = progress_bar_for_output() if config.get("enable_progress_bar") is not False else None
            if bar is not None and not any(isinstance(c, ProgressBar) for c in listed):
                kwargs["callbacks"] = [*listed, bar]
            return super().instantiate_trainer(**kwargs)

        def _parse_ckpt_path(self) -> None:
            # With --ckpt_path, LightningCLI replaces the model's arguments by the checkpoint's hyper-parameters,
            # which would drop an ftprop spec (memory included) given on the command line without a word.
            given = _model_ftprop(self.config)
            super()._parse_ckpt_path()
            _check_same_ftprop(given, _model_ftprop(self.config))

    return FTPropCLI


def _model_ftprop(config) -> Optional[dict]:
    model = config[config.subcommand].get("model") if config.get("subcommand") else None
    value = None if model is None else model.get("ftprop")
    return None if value is None else dict(value)


def _check_same_ftprop(given: Optional[dict], stored: Optional[dict]) -> None:
    """Refuse a command-line ``--model.ftprop`` that differs from the ``--ckpt_path`` checkpoint's (any spec key)."""
    from lightning_ftprop.diagnostics import LOG_DEFAULTS
    from lightning_ftprop.spec import spec_differences, spec_from_dict

    a, b = (None if x is None else spec_from_dict(x, extra_keys=list(LOG_DEFAULTS)) for x in (given, stored))
    differences = spec_differences(b or {}, a or {}, runtime=True)  # the memory mode too: the run must not change
    if differences:
        raise ValueError(
            "the --ckpt_path checkpoint was trained with another ftprop spec than the command line's "
            f"(checkpoint != command line): {'; '.join(differences)}. Resume with the checkpoint's settings"
        )


def __getattr__(name: str):  # FTPropCLI is built lazily: importing Lightning takes seconds
    if name == "FTPropCLI":
        return _cli_class()
    raise AttributeError(name)


def _error(message: str) -> int:
    print(f"lightning-ftprop: error: {message}", file=sys.stderr)
    return 2


# --- export -------------------------------------------------------------------------------------------

#: Default input side per ImageClassifier architecture (the convnets: 28 for one channel, else 32).
_DEFAULT_SIDE = {"alexnet_dorefa": 224, "resnet18": 224}


def _default_input_shape(model) -> Optional[List[int]]:
    hparams = getattr(model, "hparams", {})
    arch, channels = hparams.get("arch"), hparams.get("in_channels", 3)
    if arch is None:
        return None
    side = _DEFAULT_SIDE.get(arch, 28 if channels == 1 else 32)
    return [channels, side, side]


def export_main(argv: Sequence[str]) -> int:
    """``lightning-ftprop export``: a checkpoint of this package's pipeline to a checked ONNX file."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="lightning-ftprop export",
        description="Write the network of a lightning_ftprop checkpoint (FTPropCallback, FTPropMixin or "
        "ImageClassifier) to ONNX: threshold units frozen, conv/linear -> BN -> unit chains folded into "
        "per-channel thresholds, standard ONNX operators only, checked with onnx.checker.",
    )
    parser.add_argument("--ckpt_path", required=True, help="the Lightning checkpoint (.ckpt)")
    parser.add_argument("--output", required=True, help="the ONNX file to write")
    parser.add_argument("--input_shape", default=None, help="one sample's shape, e.g. 3,32,32 (default: from arch)")
    parser.add_argument("--model_class", default=None, help="dotted LightningModule class (default: ImageClassifier)")
    parser.add_argument("--no_fold", action="store_true", help="keep BatchNorm (freeze the units only)")
    parser.add_argument(
        "--allow_pickle", action="store_true", help="load with full pickle (only for checkpoints you trust)"
    )
    args = parser.parse_args(list(argv))
    import torch

    from lightning_ftprop.checkpoint import load_checkpoint_model
    from lightning_ftprop.export import export_onnx

    try:
        model = load_checkpoint_model(args.ckpt_path, args.model_class, args.allow_pickle)
        if args.input_shape is not None:
            try:
                shape = [int(d) for d in args.input_shape.split(",")]
            except ValueError:
                shape = []
            if not shape or min(shape) < 1:
                raise ValueError(
                    f"--input_shape must be positive integers separated by commas, got {args.input_shape!r}"
                )
        else:
            shape = _default_input_shape(model)
            if shape is None:
                raise ValueError(f"{type(model).__name__} has no 'arch' hyper-parameter; pass --input_shape C,H,W")
        path = export_onnx(model, args.output, torch.zeros(1, *shape), fold=not args.no_fold)
    except ValueError as err:
        return _error(str(err))
    print(f"wrote {path} (input shape [batch, {', '.join(map(str, shape))}])")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``lightning-ftprop`` console script; returns the exit status.

    >>> main(["config-path", "convnet4_cifar10_relu"])  # doctest: +ELLIPSIS
    /...convnet4_cifar10_relu.yaml
    0
    >>> main(["config-path", "convnet9_cifar10_relu"])  # the error goes to stderr
    2
    """
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else None
    if command == "demo":
        from lightning_ftprop import demo

        return demo.main(argv[1:])
    if command == "export":
        return export_main(argv[1:])
    if command == "configs":
        print("\n".join(available_configs()))
        return 0
    if command == "config-path":
        if len(argv) != 2:
            return _error("usage: lightning-ftprop config-path NAME")
        try:
            print(resolve_config(argv[1]))
        except ValueError as err:
            return _error(str(err))
        return 0
    from lightning_ftprop._quiet import silence_lightning_noise

    silence_lightning_noise()
    if command in (None, "-h", "--help"):
        print(_EXTRA_HELP)
        argv = ["--help"]
    try:
        argv = resolve_config_args(argv)
    except ValueError as err:
        return _error(str(err))
    from lightning_ftprop.data.base import DownloadError

    try:
        if from_command_line:  # DDP re-launches sys.argv for the other ranks: keep it equal to what runs here
            sys.argv[1:] = argv
            _cli_class()(args=None)
        else:
            _cli_class()(args=argv)
    except DownloadError as err:  # offline: one line that says what to do, not a urllib traceback
        return _error(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
