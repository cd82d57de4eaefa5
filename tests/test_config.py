"""The Hydra configs compose into what the README promises, overrides included."""

import dataclasses

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import MISSING, OmegaConf

from src.config import (
    BUILT_ELSEWHERE,
    PARTIAL,
    SchedulerSchema,
    TrainerSchema,
    register,
    signed_targets,
    validate,
)
from src.data import MNISTDataModule
from src.models import CNN, MLP, DigitClassifier, LogicGateNet
from src.modules import DigitModule, GateModule
from src.schedules import RUN_LENGTH
from src.signatures import signed_schema
from tests.conftest import REPO


def compose_train(*overrides: str, hydra: bool = False):
    register()  # the schemas the YAML files build on, as `python -m src.train` does on import
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=hydra)


def build(cfg):
    """The module as src/train.py builds it: with its optimizer and schedule."""
    scheduler = instantiate(cfg.scheduler, _convert_="all") if cfg.scheduler else None
    return instantiate(cfg.model, optimizer=instantiate(cfg.optimizer), scheduler=scheduler)


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_mnist_sgd_is_the_primer_protocol():
    cfg = compose_train("+experiment=mnist_sgd")
    model = build(cfg)
    assert isinstance(model, DigitModule) and isinstance(model.net, DigitClassifier)
    assert n_params(model) == 101_770
    optimizer = model.optimizer_factory(model.parameters())
    assert type(optimizer) is torch.optim.SGD
    assert optimizer.defaults["lr"] == 0.01 and optimizer.defaults["momentum"] == 0
    assert cfg.data.batch_size == 64 and cfg.data.normalize is False
    assert cfg.trainer.max_epochs == 5 and cfg.trainer.accelerator == "auto"
    assert cfg.data.val_size == 5000 and cfg.data.data_dir == "data"
    assert cfg.monitor == {"metric": "val/acc", "mode": "max"}


def test_mnist_adam_changes_only_the_optimizer():
    sgd, adam = compose_train("+experiment=mnist_sgd"), compose_train("+experiment=mnist_adam")
    model = build(adam)
    optimizer = model.optimizer_factory(model.parameters())
    assert type(optimizer) is torch.optim.Adam and optimizer.defaults["lr"] == 0.001
    assert adam.data == sgd.data and adam.trainer == sgd.trainer and adam.model == sgd.model


def test_mnist_cnn_swaps_the_network_only():
    cnn = compose_train("+experiment=mnist_cnn")
    adam = compose_train("+experiment=mnist_adam")
    assert isinstance(build(cnn).net, CNN)
    assert cnn.optimizer._target_ == adam.optimizer._target_ and cnn.optimizer.lr == 0.003
    assert cnn.scheduler.schedule._target_.endswith("OneCycleLR") and cnn.data.normalize
    assert cnn.trainer.max_epochs == 5


@pytest.mark.parametrize(("gate", "hidden", "lr"), [("nand", 3, 0.5), ("xor", 4, 1.0)])
def test_gate_experiments(gate, hidden, lr):
    cfg = compose_train(f"+experiment={gate}")
    assert cfg.data.gate == gate and cfg.trainer.max_steps == 4000
    assert cfg.trainer.accelerator == "cpu"
    model = build(cfg)
    assert isinstance(model, GateModule) and isinstance(model.net, LogicGateNet)
    assert model.net.hidden.out_features == hidden
    assert model.optimizer_factory.keywords["lr"] == lr
    assert cfg.monitor == {"metric": "val/loss", "mode": "min"}
    assert cfg.callbacks.model_checkpoint.monitor == "val/loss"
    assert "gate_pictures" in cfg.callbacks and "digit_pictures" not in cfg.callbacks


def test_overrides_a_user_types():
    cfg = compose_train(
        "+experiment=mnist_sgd",
        "optimizer=adamw",
        "optimizer.lr=0.1",
        "model.net.hidden_dim=256",
        "model.net.activation=gelu",
        "data.batch_size=128",
        "data.data_dir=/somewhere",
        "data.normalize=true",
        "trainer.max_epochs=10",
        "trainer=gpu",
        "seed=7",
        "ckpt_path=/runs/x/checkpoints/last.ckpt",
    )
    model = build(cfg)
    optimizer = model.optimizer_factory(model.parameters())
    assert type(optimizer) is torch.optim.AdamW and optimizer.defaults["lr"] == 0.1
    assert model.net.hidden.out_features == 256 and isinstance(model.net.act, torch.nn.GELU)
    data = instantiate(cfg.data)
    assert isinstance(data, MNISTDataModule)
    assert (data.batch_size, data.data_dir, data.seed) == (128, "/somewhere", 7) and data.normalize
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.max_epochs == 10
    assert cfg.ckpt_path == "/runs/x/checkpoints/last.ckpt"


def test_any_network_by_config():
    mlp = build(compose_train("+experiment=mnist_sgd", "model/net=mlp",
                              "model.net.hidden_dims=[64,32,16]"))  # fmt: skip
    assert isinstance(mlp.net, MLP)
    assert [layer.out_features for layer in mlp.net.hidden[::2]] == [64, 32, 16]
    custom = build(compose_train(
        "+experiment=mnist_sgd", "model/net=custom", "model.net._target_=src.models.CNN",
        "+model.net.channels=[4]", "+model.net.hidden_dim=8", "+model.net.activation=relu",
    ))  # fmt: skip
    assert isinstance(custom.net, CNN) and custom.net.hidden.out_features == 8


def test_trainer_flags_lightning_documents_are_typed():
    cfg = compose_train(
        "+experiment=mnist_sgd", "trainer.gradient_clip_val=0.5",
        "trainer.gradient_clip_algorithm=value", "trainer.accumulate_grad_batches=4",
        "trainer.val_check_interval=0.25", "trainer.limit_train_batches=100",
        "trainer.precision=bf16-mixed", "trainer.profiler=simple", "trainer.max_time=00:01:00:00",
        "paths.output_dir=/tmp/run",  # what Hydra's runtime would give
    )  # fmt: skip
    validate(cfg)
    assert cfg.trainer.gradient_clip_val == 0.5 and cfg.trainer.accumulate_grad_batches == 4
    with pytest.raises(ConfigCompositionException, match="gradient_clip_vall"):
        compose_train("+experiment=mnist_sgd", "trainer.gradient_clip_vall=1")
    unknown = compose_train("+experiment=mnist_sgd", "+trainer.foo=1", "paths.output_dir=/tmp")
    with pytest.raises(ValueError, match="trainer.foo is not a setting"):
        validate(unknown)


def test_the_trainer_schema_is_lightnings_signature():
    """Every Trainer argument but those the logger/ and callbacks/ groups build, with Lightning's
    own default, as `inspect` reads them from the imported class."""
    import inspect

    import lightning.pytorch as pl

    signature = inspect.signature(pl.Trainer.__init__).parameters.values()
    wanted = {p.name: p.default for p in signature if p.name not in ("self", *BUILT_ELSEWHERE)}
    fields = {f.name: f.default for f in dataclasses.fields(TrainerSchema) if f.name != "_target_"}
    assert fields == wanted


def test_the_scheduler_schema_is_lightnings_lr_scheduler_config():
    """Lightning's own lr_scheduler keys and defaults, as its dataclass has them, the schedule in
    place of the built scheduler; the rate's tag is the project's."""
    from lightning.pytorch.utilities.types import LRSchedulerConfig

    wanted = {f.name: f.default for f in dataclasses.fields(LRSchedulerConfig)
              if f.name not in ("scheduler", "reduce_on_plateau")}  # fmt: skip
    fields = {f.name: f.default for f in dataclasses.fields(SchedulerSchema)}
    assert fields.pop("schedule") is MISSING
    assert fields.pop("name") == "train/lr" and wanted.pop("name") is None
    assert fields == wanted


SIGNED = signed_targets()


def test_the_signed_schemas_are_those_the_yaml_files_ask_for():
    assert {
        "callbacks": ["src.callbacks.DigitPictures", "src.callbacks.GatePictures"],
        "data": ["src.data.LogicGateDataModule", "src.data.MNISTDataModule"],
        "net": ["src.models.CNN", "src.models.DigitClassifier", "src.models.LogicGateNet",
                "src.models.MLP"],
        "optimizer": ["torch.optim.Adam", "torch.optim.AdamW", "torch.optim.SGD"],
        "scheduler": [f"torch.optim.lr_scheduler.{name}" for name in (
            "CosineAnnealingLR", "OneCycleLR", "ReduceLROnPlateau", "StepLR")],
    } == SIGNED  # fmt: skip


@pytest.mark.parametrize("target", [t for targets in SIGNED.values() for t in targets])
def test_a_signed_schema_is_its_classs_signature(target):
    """A schema read from the source holds the arguments `inspect` reads from the imported class,
    with their defaults: a partial's less the one it is handed and its keyword-only switches."""
    import inspect

    from hydra.utils import get_class

    group = next(g for g, targets in SIGNED.items() if target in targets)
    params = list(inspect.signature(get_class(target).__init__).parameters.values())[1:]
    if group in PARTIAL:
        params = [p for p in params[1:] if p.name not in PARTIAL[group]
                  and (p.kind != p.KEYWORD_ONLY or p.default is p.empty)]  # fmt: skip
    # No default: one the YAML must give, or the run's length for a schedule (src/schedules.py).
    empty = {p.name: None if p.name in RUN_LENGTH else "???" for p in params}
    wanted = {p.name: empty[p.name] if p.default is p.empty else p.default for p in params}
    schema = signed_schema(target, group in PARTIAL, PARTIAL.get(group, ()))
    fields = {f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default
              for f in dataclasses.fields(schema) if not f.name.startswith("_")}  # fmt: skip
    assert fields == {k: list(v) if isinstance(v, tuple) else v for k, v in wanted.items()}


@pytest.mark.parametrize("name", ["none", "cosine", "onecycle", "step", "plateau"])
def test_every_schedule_builds_with_its_optimizer(name):
    cfg = compose_train("+experiment=mnist_sgd", f"scheduler={name}")
    validate(OmegaConf.masked_copy(cfg, ["scheduler", "optimizer"]))
    model = build(cfg)
    assert model.scheduler["interval"] == ("step" if name in ("cosine", "onecycle") else "epoch")
    assert model.scheduler["name"] == "train/lr"


def test_sgd_momentum_and_cpu_trainer():
    cfg = compose_train("+experiment=mnist_sgd", "optimizer.momentum=0.9", "trainer=cpu")
    assert build(cfg).optimizer_factory.keywords["momentum"] == 0.9
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.max_epochs == 5


def test_fashion_mnist_uses_the_same_datamodule():
    cfg = compose_train("+experiment=mnist_sgd", "data=fashion_mnist")
    data = instantiate(cfg.data)
    assert data.raw_folder.parts[-2:] == ("FashionMNIST", "raw")
    assert cfg.data.batch_size == 64


def test_sweep_presets_name_their_grids():
    cfg = compose_train("+experiment=mnist_sgd", "+sweep=mnist_optimizers", hydra=True)
    assert dict(cfg.hydra.sweeper.params) == {
        "optimizer": "sgd,adam",
        "optimizer.lr": "0.1,0.01,0.001",
        "data.batch_size": "32,64,128",
    }
