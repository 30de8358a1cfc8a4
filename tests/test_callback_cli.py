"""FTPropCallback and FTPropMixin configured through LightningCLI (YAML and command line)."""

from __future__ import annotations

from typing import Optional

import torch
import yaml
from lightning.pytorch.cli import LightningCLI
from lightning_helpers import TinyData, TinyNet

import lightning_ftprop as ftp

TRAINER = [
    "--trainer.accelerator=cpu",
    "--trainer.max_steps=2",
    "--trainer.logger=false",
    "--trainer.enable_checkpointing=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.limit_val_batches=0",
]


def _ftprop(cli) -> ftp.FTPropCallback:
    (callback,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, ftp.FTPropCallback)]
    return callback


def test_callback_from_yaml_class_path_and_init_args(tmp_path):
    config = {
        "trainer": {
            "callbacks": [
                {
                    "class_path": "lightning_ftprop.FTPropCallback",
                    "init_args": {
                        "activation": "qrelu",
                        "rule": "sste",
                        "unit_kwargs": {"thresholds": 5},
                        "exclude": ["net.4"],
                        "log_every_n_steps": 1,
                    },
                }
            ]
        }
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = LightningCLI(TinyNet, TinyData, args=["fit", f"--config={path}", *TRAINER], save_config_callback=None)
    callback = _ftprop(cli)
    assert callback.spec["unit_kwargs"] == {"thresholds": 5} and callback.layers == ["net.2"]
    unit = cli.model.net[2]
    assert isinstance(unit, ftp.QReLU) and unit.thresholds == 5 and unit.rule.name == "sste"
    assert type(cli.model.net[4]).__name__ == "ReLU"
    assert "ftprop/net_2/saturated" in callback.latest and cli.trainer.global_step == 2


class TwoActivationNet(TinyNet):
    """TinyNet with a Tanh in place of its second ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.net[4] = torch.nn.Tanh()


def test_per_target_mapping_from_yaml_gives_each_target_its_own_arguments(tmp_path):
    config = {
        "trainer": {
            "callbacks": [
                {
                    "class_path": "lightning_ftprop.FTPropCallback",
                    "init_args": {
                        "rule": "soft_hinge",
                        "mapping": {"ReLU": "sign", "Tanh": ["qrelu", {"thresholds": 5, "rule": "sste"}]},
                        "log_every_n_steps": 1,
                    },
                }
            ]
        }
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = LightningCLI(
        TwoActivationNet, TinyData, args=["fit", f"--config={path}", *TRAINER], save_config_callback=None
    )
    callback = _ftprop(cli)
    assert callback.spec["mapping"] == {"ReLU": "sign", "Tanh": ["qrelu", {"thresholds": 5, "rule": "sste"}]}
    sign, qrelu = cli.model.net[2], cli.model.net[4]
    assert isinstance(sign, ftp.Sign) and sign.rule.name == "soft_hinge"
    assert isinstance(qrelu, ftp.QReLU) and qrelu.thresholds == 5 and qrelu.rule.name == "sste"
    assert {"ftprop/net_2/mismatch", "ftprop/net_4/mismatch"} <= set(callback.latest)
    assert cli.trainer.global_step == 2


def test_callback_appended_on_the_command_line():
    cli = LightningCLI(
        TinyNet,
        TinyData,
        save_config_callback=None,
        args=[
            "fit",
            "--trainer.callbacks+=FTPropCallback",
            "--trainer.callbacks.activation=step",
            "--trainer.callbacks.rule=hinge",
            "--trainer.callbacks.weighted=false",
            *TRAINER,
        ],
    )
    callback = _ftprop(cli)
    assert callback.spec["activation"] == "step" and callback.spec["weighted"] is False
    assert [type(u).__name__ for _, u in ftp.threshold_units(cli.model)] == ["Step", "Step"]
    assert all(not u.weighted and u.rule.name == "hinge" for _, u in ftp.threshold_units(cli.model))


class CLIMixinNet(ftp.FTPropMixin, TinyNet):
    def __init__(self, hidden: int = 8, ftprop: Optional[dict] = None):
        super().__init__(hidden=hidden)
        self.save_hyperparameters()


def test_mixin_spec_from_the_command_line():
    cli = LightningCLI(
        CLIMixinNet,
        TinyData,
        save_config_callback=None,
        args=[
            "fit",
            '--model.ftprop={"activation": "sign", "rule": "ste", "log_every_n_steps": 1}',
            *TRAINER,
        ],
    )
    assert cli.model.hparams.ftprop["rule"] == "ste"
    assert [type(u).__name__ for _, u in ftp.threshold_units(cli.model)] == ["Sign", "Sign"]
    assert cli.trainer.global_step == 2
