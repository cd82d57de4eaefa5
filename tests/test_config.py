"""The Hydra configs compose into what the README promises, overrides included."""

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from src.config import register
from src.data import MNISTDataModule
from src.modules import DigitModule, GateModule
from tests.conftest import REPO


def compose_train(*overrides: str):
    register()  # the schemas the YAML files build on, as `python -m src.train` does on import
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def build_optimizer(cfg) -> torch.optim.Optimizer:
    model = instantiate(cfg.model, optimizer=instantiate(cfg.optimizer))
    return model.configure_optimizers()


def test_mnist_sgd_is_the_primer_protocol():
    cfg = compose_train("+experiment=mnist_sgd")
    optimizer = build_optimizer(cfg)
    assert type(optimizer) is torch.optim.SGD
    assert optimizer.defaults["lr"] == 0.01 and optimizer.defaults["momentum"] == 0
    assert cfg.data.batch_size == 64 and cfg.data.normalize is False
    assert cfg.trainer.max_epochs == 5 and cfg.trainer.accelerator == "auto"
    assert cfg.data.val_size == 5000 and cfg.data.data_dir == "data"
    model = instantiate(cfg.model)
    assert isinstance(model, DigitModule)
    assert sum(p.numel() for p in model.parameters()) == 101_770


def test_mnist_adam_changes_only_the_optimizer():
    sgd, adam = compose_train("+experiment=mnist_sgd"), compose_train("+experiment=mnist_adam")
    optimizer = build_optimizer(adam)
    assert type(optimizer) is torch.optim.Adam and optimizer.defaults["lr"] == 0.001
    assert adam.data == sgd.data and adam.trainer == sgd.trainer and adam.model == sgd.model


@pytest.mark.parametrize(("gate", "hidden", "lr"), [("nand", 3, 0.5), ("xor", 4, 1.0)])
def test_gate_experiments(gate, hidden, lr):
    cfg = compose_train(f"+experiment={gate}")
    assert cfg.data.gate == gate and cfg.trainer.max_steps == 4000
    assert cfg.trainer.accelerator == "cpu"
    model = instantiate(cfg.model)
    assert isinstance(model, GateModule) and model.net.hidden.out_features == hidden
    assert build_optimizer(cfg).defaults["lr"] == lr
    assert cfg.callbacks.model_checkpoint.monitor == "val/loss"


def test_overrides_a_user_types():
    cfg = compose_train(
        "+experiment=mnist_sgd",
        "optimizer=adamw",
        "optimizer.lr=0.1",
        "model.hidden_dim=256",
        "model.activation=gelu",
        "data.batch_size=128",
        "data.data_dir=/somewhere",
        "data.normalize=true",
        "trainer.max_epochs=10",
        "trainer=gpu",
        "seed=7",
        "ckpt_path=/runs/x/checkpoints/last.ckpt",
    )
    optimizer = build_optimizer(cfg)
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["lr"] == 0.1
    model = instantiate(cfg.model)
    assert model.net.net[1].out_features == 256 and isinstance(model.net.net[2], torch.nn.GELU)
    data = instantiate(cfg.data)
    assert isinstance(data, MNISTDataModule)
    assert (data.batch_size, data.data_dir, data.normalize, data.seed) == (
        128,
        "/somewhere",
        True,
        7,
    )
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.max_epochs == 10
    assert cfg.ckpt_path == "/runs/x/checkpoints/last.ckpt"


def test_sgd_momentum_and_cpu_trainer():
    cfg = compose_train("+experiment=mnist_sgd", "optimizer.momentum=0.9", "trainer=cpu")
    assert build_optimizer(cfg).defaults["momentum"] == 0.9
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.max_epochs == 5


def test_fashion_mnist_uses_the_same_datamodule():
    cfg = compose_train("+experiment=mnist_sgd", "data=fashion_mnist")
    data = instantiate(cfg.data)
    assert data.raw_folder.parts[-2:] == ("FashionMNIST", "raw")
    assert cfg.data.batch_size == 64


def test_sweep_presets_name_their_grids():
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        register()
        cfg = compose(
            "train", overrides=["+experiment=mnist_sgd", "+sweep=mnist_optimizers"],
            return_hydra_config=True,
        )  # fmt: skip
    assert dict(cfg.hydra.sweeper.params) == {
        "optimizer": "sgd,adam",
        "optimizer.lr": "0.1,0.01,0.001",
        "data.batch_size": "32,64,128",
    }
