"""The lightning-ftprop command: shipped configs, config names, bad input, and a 2-process DDP run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from disk_formats import write_cifar10, write_image_folder

from lightning_ftprop.cli import CONFIG_DIR, available_configs, main, resolve_config, resolve_config_args
from lightning_ftprop.paper import METHODS as PAPER_METHODS
from lightning_ftprop.paper import RECIPES

# main(argv) inside pytest: LightningCLI warns that sys.argv (pytest's) is also set; that is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The paper's networks, methods and hyper-parameters come from lightning_ftprop.paper (tests/test_paper.py checks
# them against the paper); here each shipped config must carry them.
NETWORKS = tuple(RECIPES)
METHODS = tuple(m.slug for m in PAPER_METHODS)
DATASET = {net: recipe.dataset for net, recipe in RECIPES.items()}
EXPECTED = {
    net: (r.optimizer, r.lr, r.epochs, list(r.milestones), r.batch_size, r.weight_decay) for net, r in RECIPES.items()
}


def _print_config(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_one_config_per_table_1_cell_plus_the_offline_fashion_mnist_set():
    expected = {f"{net}_{DATASET[net]}_{method}" for net in NETWORKS for method in METHODS}
    expected |= {f"convnet4_fashion_mnist_{method}" for method in METHODS}
    assert set(available_configs()) == expected


@pytest.mark.parametrize("name", sorted(f"{n}_{DATASET[n]}_{m}" for n in NETWORKS for m in METHODS))
def test_every_shipped_config_parses_with_the_reference_hyperparameters(capsys, name):
    config = _print_config(capsys, "--config", name)
    arch = next(net for net in NETWORKS if name.startswith(net + "_"))
    optimizer, lr, epochs, milestones, batch, decays = EXPECTED[arch]
    model, data, trainer = config["model"], config["data"], config["trainer"]
    ftprop = model["ftprop"]
    activation = model["activation"] or ftprop["activation"]
    assert model["arch"] == arch and name.startswith(f"{arch}_{DATASET[arch]}_{activation}")
    if activation in ("sign", "qrelu"):
        assert model["activation"] is None and name.endswith("_" + ftprop["rule"])  # one spelling: model.ftprop
    else:
        assert ftprop is None
    assert (model["optimizer"], model["lr"], trainer["max_epochs"], model["milestones"]) == (
        optimizer,
        lr,
        epochs,
        milestones,
    )
    assert model["weight_decay"] == decays[{"sign": 1, "qrelu": 2}.get(activation, 0)]
    if activation == "qrelu":
        assert ftprop["unit_kwargs"] == {"thresholds": RECIPES[arch].qrelu_thresholds, "mode": "single"}
    if DATASET[arch] == "imagenet":
        assert data["class_path"] == "lightning_ftprop.data.ImageNetDataModule"
        assert data["init_args"]["global_batch_size"] == batch and model["num_classes"] == 1000
        assert trainer["strategy"] == "ddp" and trainer["sync_batchnorm"] is False
    else:
        assert data["class_path"] == "lightning_ftprop.data.CIFAR10DataModule"
        assert data["init_args"]["batch_size"] == batch and model["num_classes"] == 10
    assert config["seed_everything"] == 468412397


def test_config_option_accepts_names_with_or_without_yaml_and_file_paths(tmp_path):
    path = os.path.join(CONFIG_DIR, "convnet8_cifar10_sign_sste.yaml")
    assert resolve_config("convnet8_cifar10_sign_sste") == path
    assert resolve_config("convnet8_cifar10_sign_sste.yaml") == path
    own = tmp_path / "mine.yaml"
    own.write_text("model:\n  arch: convnet4\n")
    assert resolve_config(str(own)) == str(own)
    assert resolve_config_args(["fit", "-c", "convnet4_cifar10_relu", "--config=convnet8_cifar10_relu"]) == [
        "fit",
        "-c",
        os.path.join(CONFIG_DIR, "convnet4_cifar10_relu.yaml"),
        "--config=" + os.path.join(CONFIG_DIR, "convnet8_cifar10_relu.yaml"),
    ]


def test_command_line_overrides_apply_on_top_of_a_shipped_config(capsys):
    config = _print_config(
        capsys,
        "--config",
        "resnet18_imagenet_sign_sste",
        "--trainer.sync_batchnorm=true",
        "--data.data_dir=/data/in1k",
        "--model.lr=0.05",
    )
    assert config["trainer"]["sync_batchnorm"] is True
    assert config["data"]["init_args"]["data_dir"] == "/data/in1k" and config["model"]["lr"] == 0.05


def test_unknown_config_name_error_lists_the_shipped_configs(capsys):
    assert main(["fit", "--config", "convnet4_cifar100_sign"]) == 2
    err = capsys.readouterr().err
    assert "unknown config 'convnet4_cifar100_sign'" in err and "convnet4_cifar10_sign_soft_hinge" in err
    assert main(["config-path", "nope"]) == 2
    assert "unknown config 'nope'" in capsys.readouterr().err


def test_config_path_and_configs_subcommands(capsys):
    assert main(["config-path", "alexnet_dorefa_imagenet_qrelu_sste"]) == 0
    assert capsys.readouterr().out.strip() == os.path.join(CONFIG_DIR, "alexnet_dorefa_imagenet_qrelu_sste.yaml")
    assert main(["configs"]) == 0
    assert capsys.readouterr().out.split() == available_configs()


def test_help_mentions_the_extra_subcommands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "demo" in out and "config-path" in out and "fit" in out


@pytest.mark.parametrize(
    "override, match",
    [
        ("--model.arch=vgg16", "unknown arch 'vgg16'"),
        ("--model.activation=tanh", "unknown activation 'tanh'"),
        ("--model.ftprop.rule=magic", "unknown rule 'magic'"),
        ("--model.ftprop.unit_kwargs.thresholds=5", "Sign does not take thresholds"),
    ],
)
def test_unknown_model_or_activation_on_the_command_line_is_a_clear_error(tmp_path, override, match):
    with pytest.raises((ValueError, TypeError), match=match):
        main(["fit", "--config", "convnet4_cifar10_sign_sste", override, f"--trainer.default_root_dir={tmp_path}"])


def test_cifar_config_trains_on_written_batches(tmp_path):
    import csv

    import torch

    import lightning_ftprop as ftp
    from lightning_ftprop.checkpoint import load_checkpoint_model

    write_cifar10(str(tmp_path / "cifar"), per_batch=8, test_size=8)
    main(
        [
            "fit",
            "--config",
            "convnet4_cifar10_sign_soft_hinge",
            f"--data.data_dir={tmp_path / 'cifar'}",
            "--data.download=false",
            "--data.num_workers=0",
            "--data.batch_size=8",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1",
            "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false",
            "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
            f"--trainer.logger.save_dir={tmp_path / 'logs'}",
            f"--trainer.default_root_dir={tmp_path / 'run'}",
        ]
    )
    checkpoints = sorted(p.name for p in tmp_path.rglob("*.ckpt"))
    assert "last.ckpt" in checkpoints and len(checkpoints) == 2  # best by val/acc, and last
    (last,) = tmp_path.rglob("last.ckpt")
    saved = torch.load(last, map_location="cpu", weights_only=True)
    assert saved["global_step"] == 2 and saved["epoch"] == 0
    assert (
        saved["callbacks"]["ftprop"]["spec"]["activation"] == "sign"
        and saved["callbacks"]["ftprop"]["spec"]["rule"] == "soft_hinge"
    )

    # the trained model comes back as a threshold network: Sign units with the soft_hinge rule, its weights
    for model in (ftp.ImageClassifier.load_from_checkpoint(last, map_location="cpu"), load_checkpoint_model(str(last))):
        units = ftp.threshold_units(model)
        assert [name for name, _ in units] == saved["callbacks"]["ftprop"]["layers"] and len(units) == 3
        assert all(type(u) is ftp.Sign and u.rule.name == "soft_hinge" and u.weighted for _, u in units)
        assert not ftp.float_activations(model)
        for key, value in saved["state_dict"].items():
            torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)
        logits = model.eval()(torch.zeros(2, 3, 32, 32))
        assert logits.shape == (2, 10) and torch.isfinite(logits).all()

    # the metrics were logged: the classifier's and the per-layer ftprop statistics of step 0
    (metrics_csv,) = (tmp_path / "logs").rglob("metrics.csv")
    rows = list(csv.DictReader(metrics_csv.open()))
    logged = {key for row in rows for key, value in row.items() if value}
    assert {"train/loss_epoch", "train/acc", "val/loss", "val/acc"} <= logged
    layers = [key.replace(".", "_") for key in saved["callbacks"]["ftprop"]["layers"]]
    expected = {f"ftprop/{layer}/{stat}" for layer in layers for stat in ftp.diagnostics.STATS}
    assert expected <= logged
    (step0,) = [row for row in rows if row.get(f"ftprop/{layers[0]}/mismatch")]
    assert int(step0["step"]) == 0 and 0.0 <= float(step0[f"ftprop/{layers[0]}/mismatch"]) <= 1.0
    assert 0.0 <= float(next(row["val/acc"] for row in rows if row["val/acc"])) <= 1.0


def test_cifar_config_on_a_missing_data_dir_names_the_path(tmp_path):
    missing = tmp_path / "no-cifar"
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        main(
            [
                "fit",
                "--config",
                "convnet4_cifar10_relu",
                f"--data.data_dir={missing}",
                "--data.download=false",
                "--trainer.accelerator=cpu",
                f"--trainer.default_root_dir={tmp_path}",
            ]
        )
    assert str(missing) in str(err.value)


@pytest.mark.ddp
def test_imagenet_resnet18_config_trains_two_steps_with_ddp_on_two_cpu_processes(tmp_path):
    write_image_folder(str(tmp_path / "imagenet"), per_class={"train": 4, "val": 2}, size=(40, 40))
    run_dir = tmp_path / "run"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MASTER_PORT", "MASTER_ADDR", "WORLD_SIZE", "RANK", "LOCAL_RANK")
    }
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    command = [
        sys.executable,
        "-m",
        "lightning_ftprop.cli",
        "fit",
        "--config",
        "resnet18_imagenet_qrelu_soft_hinge",
        f"--data.data_dir={tmp_path / 'imagenet'}",
        "--data.image_size=32",
        "--data.global_batch_size=4",
        "--data.num_workers=0",
        "--model.num_classes=3",
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.max_steps=2",
        "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={run_dir}",
    ]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log and "distributed_backend=gloo" in log
    import torch

    (last,) = run_dir.rglob("last.ckpt")
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 2
    assert checkpoint["hyper_parameters"]["activation"] == "qrelu"
    assert checkpoint["hyper_parameters"]["ftprop"]["unit_kwargs"] == {"thresholds": 5, "mode": "single"}
    assert checkpoint["callbacks"]["ftprop"]["spec"]["unit_kwargs"] == {"thresholds": 5, "mode": "single"}
    (config,) = run_dir.rglob("config.yaml")
    saved = yaml.safe_load(config.read_text())
    assert saved["trainer"]["strategy"] == "ddp" and str(saved["trainer"]["devices"]) == "2"


def test_slurm_script_command_parses_with_matching_devices_nodes_and_requeue(capsys):
    import shlex

    script = os.path.join(ROOT, "scripts", "slurm", "train.sbatch")
    text = open(script).read()
    sbatch = dict(
        line[len("#SBATCH --") :].split("=", 1)
        for line in text.splitlines()
        if line.startswith("#SBATCH --") and "=" in line
    )
    assert sbatch["signal"] == "USR1@90" and "#SBATCH --requeue" in text
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in ("CONFIG", "DATA_DIR")}
    env["FTPROP_PRINT_COMMAND"] = "1"
    out = subprocess.run(["bash", script], env=env, capture_output=True, text=True, check=True).stdout
    words = shlex.split(out)
    assert words[:3] == ["srun", "--kill-on-bad-exit=1", "lightning-ftprop"] and words[3] == "fit"
    config = _print_config(capsys, *words[4:])
    trainer = config["trainer"]
    assert str(trainer["devices"]) == sbatch["ntasks-per-node"] and trainer["num_nodes"] == int(sbatch["nodes"])
    assert trainer["strategy"] == "ddp" and config["data"]["init_args"]["global_batch_size"] == 256
    plugins = {p["class_path"]: p.get("init_args") for p in trainer["plugins"]}
    assert plugins["lightning.pytorch.plugins.environments.SLURMEnvironment"]["auto_requeue"] is True
    assert "lightning_ftprop.checkpoint_io.AtomicCheckpointIO" in plugins
    assert "lightning_ftprop.requeue.StepBoundaryRequeue" in [c["class_path"] for c in trainer["callbacks"]]


def test_per_device_batch_can_replace_the_global_batch(capsys):
    config = _print_config(
        capsys, "--config", "alexnet_dorefa_imagenet_relu", "--data.global_batch_size=null", "--data.batch_size=32"
    )
    assert config["data"]["init_args"]["global_batch_size"] is None and config["data"]["init_args"]["batch_size"] == 32


def test_cifar_config_offline_ends_in_one_error_line_not_a_traceback(tmp_path, capsys):
    import socket

    with socket.socket() as sock:  # a local port with nothing listening: the download is refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    status = main(
        [
            "fit",
            "--config",
            "convnet4_cifar10_sign_soft_hinge",
            f"--data.data_dir={tmp_path / 'cifar'}",
            f"--data.url=http://127.0.0.1:{port}/cifar-10-python.tar.gz",
            "--trainer.accelerator=cpu",
            f"--trainer.default_root_dir={tmp_path / 'run'}",
        ]
    )
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("lightning-ftprop: error:")]
    assert status == 2 and "could not download" in line and "--data.download=false" in line
    assert "Traceback" not in err and "URLError" not in err
