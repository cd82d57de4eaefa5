"""Typed schemas for the config groups, registered in Hydra's ConfigStore.

Hydra checks every override against them while it composes the config, so `optimizer.lr=abc` or
`optimizer.lrr=0.1` fail with Hydra's message naming the key. `validate` then builds the
dataclasses, whose `__post_init__` checks the ranges, before anything heavy is imported.
The YAML files under conf/ pick a schema in their defaults list and hold the values.
"""

import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf


class InputError(Exception):
    """Bad input from the user (a config value, a file); the message says what to fix."""


class ConfigError(InputError, ValueError):
    """A config value that cannot work; the message names the key."""


def require(ok: bool, key: str, value, expectation: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is out of range: it {expectation}")


@dataclass
class SGDSchema:
    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    lr: float = 0.01
    momentum: float = 0.0
    dampening: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False

    def __post_init__(self):
        require(self.lr > 0, "optimizer.lr", self.lr, "must be > 0")
        require(self.momentum >= 0, "optimizer.momentum", self.momentum, "must be >= 0")
        require(self.weight_decay >= 0, "optimizer.weight_decay", self.weight_decay, "must be >= 0")


@dataclass
class AdamSchema:
    _target_: str = "torch.optim.Adam"
    _partial_: bool = True
    lr: float = 0.001
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    amsgrad: bool = False

    def __post_init__(self):
        require(self.lr > 0, "optimizer.lr", self.lr, "must be > 0")
        require(self.weight_decay >= 0, "optimizer.weight_decay", self.weight_decay, "must be >= 0")
        require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "optimizer.betas",
            list(self.betas),
            "must be two numbers in [0, 1)",
        )


@dataclass
class MNISTSchema:
    _target_: str = "src.data.MNISTDataModule"
    data_dir: str = "data"
    dataset: str = "mnist"
    batch_size: int = 64
    batches_per_call: int = 100
    eval_batch_size: int = 5000
    val_size: int = 5000
    split_seed: int = 0
    normalize: bool = False
    download: bool = True
    seed: int = 0

    def __post_init__(self):
        for key in ("batch_size", "batches_per_call", "eval_batch_size", "val_size"):
            value = getattr(self, key)
            require(value >= 1, f"data.{key}", value, "must be at least 1")
        require(self.val_size < 60_000, "data.val_size", self.val_size, "must be below 60000")


@dataclass
class LogicGateDataSchema:
    _target_: str = "src.data.LogicGateDataModule"
    gate: str = "nand"
    steps_per_epoch: int = 1000
    batches_per_call: int = 100

    def __post_init__(self):
        for key in ("steps_per_epoch", "batches_per_call"):
            value = getattr(self, key)
            require(value >= 1, f"data.{key}", value, "must be at least 1")


@dataclass
class NetSchema:
    _target_: str
    hidden_dim: int
    activation: str

    def __post_init__(self):
        require(self.hidden_dim >= 1, "model.hidden_dim", self.hidden_dim, "must be at least 1")


def register() -> None:
    """Make the schemas and the `uid` resolver available to the configs under conf/."""
    # A short random id in every output directory name: runs started in the same second never
    # share a directory. Cached, so every reference in one config (and a sweep's jobs) agrees.
    OmegaConf.register_new_resolver(
        "uid", lambda: uuid.uuid4().hex[:6], use_cache=True, replace=True
    )
    store = ConfigStore.instance()
    # Under schema/ rather than in the groups themselves, so that Hydra's list of a group's
    # options (shown for a typo like optimizer=sgdd) holds only the real choices.
    store.store(group="schema/optimizer", name="sgd", node=SGDSchema)
    store.store(group="schema/optimizer", name="adam", node=AdamSchema)
    store.store(group="schema/data", name="mnist", node=MNISTSchema)
    store.store(group="schema/data", name="logic_gate", node=LogicGateDataSchema)
    store.store(group="schema/model", name="net", node=NetSchema)


# Trainer options that belong to Lightning's automatic optimization, which the modules replace
# with their own steps (several per training_step call; see src/modules/supervised.py).
AUTOMATIC_ONLY = {"gradient_clip_val": (None, 0), "accumulate_grad_batches": (1,)}


def validate(cfg: DictConfig) -> None:
    """Check the ranges of every typed group and that `ckpt_path` is a checkpoint file."""
    for group in ("optimizer", "data", "model"):
        if OmegaConf.get_type(cfg[group]) is not dict:
            OmegaConf.to_object(cfg[group])  # runs the schema's __post_init__
    for key, allowed in AUTOMATIC_ONLY.items():
        value = cfg.trainer.get(key, allowed[0])
        if value not in allowed:
            raise ConfigError(
                f"trainer.{key}={value} is not supported: the modules take their optimizer "
                "steps themselves (manual optimization), which Lightning does not clip or "
                "accumulate. Leave it unset."
            )
    if cfg.get("ckpt_path"):
        check_checkpoint(Path(cfg.ckpt_path))


def check_checkpoint(path: Path) -> None:
    """A Lightning checkpoint is a torch.save zip archive; anything else is refused here."""
    if not path.is_file():
        raise ConfigError(f"ckpt_path={path} does not exist: give the path of a .ckpt file")
    if not zipfile.is_zipfile(path) or not any(
        name.endswith("/data.pkl") for name in zipfile.ZipFile(path).namelist()
    ):
        raise ConfigError(f"ckpt_path={path} is not a PyTorch/Lightning checkpoint")


def run_config(ckpt: Path) -> DictConfig:
    """The composed config of the run that wrote `ckpt`: its model and data settings."""
    path = ckpt.resolve().parent.parent / ".hydra" / "config.yaml"
    if not path.is_file():
        raise InputError(
            f"{path} not found: use a checkpoint inside the run directory that training wrote "
            "it to (its .hydra/config.yaml says which model and data it used)"
        )
    return OmegaConf.load(path)
