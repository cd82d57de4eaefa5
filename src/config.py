"""Typed schemas for the configs under conf/, registered in Hydra's ConfigStore.

Hydra checks every override against them while it composes the config, so `optimizer.lr=abc`,
`optimizer.lrr=0.1` or `+trainer.foo=1` fail with Hydra's message naming the key. `validate` then
builds the dataclasses, whose `__post_init__` checks the ranges, before anything heavy is imported;
last it builds the optimizer and its schedule once on a stand-in weight, so that a value PyTorch's
own checks refuse is one line naming the key even for an optimizer or schedule with no schema.

The YAML files hold the values and pick their schema in their defaults list; a schema holds types
and ranges, and a default only for a library argument that no YAML sets, so that
`trainer.gradient_clip_val=1` or `optimizer.nesterov=true` can be typed: the Trainer's schema is
made from Lightning's own signature, its names, types and defaults.
"""

import ast
import contextlib
import dataclasses
import difflib
import importlib.util
import math
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import MISSING, DictConfig, OmegaConf

from src.command_line import help_group
from src.errors import ConfigError
from src.job_names import job_dirname
from src.schedules import run_length

# The names a config may use; src/models/activations.py, src/data/*.py map them (a test checks).
ACTIVATIONS = ("relu", "gelu", "sigmoid", "tanh", "leaky_relu")
GATES = ("and", "or", "nand", "xor")
DATASETS = ("mnist", "fashion_mnist")


def require(ok: bool, key: str, value, expectation: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is out of range: it {expectation}")


def one_of(key: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not one of: {', '.join(map(str, choices))}")


def is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- optimizer/ ---------------------------------------------------------------------------------


def require_rate(lr: float, weight_decay: float) -> None:
    """An optimizer's learning rate and weight decay: finite, as PyTorch's optimizers need them."""
    require(math.isfinite(lr) and lr > 0, "optimizer.lr", lr, "must be a finite number > 0")
    require(math.isfinite(weight_decay) and weight_decay >= 0, "optimizer.weight_decay",
            weight_decay, "must be a finite number >= 0")  # fmt: skip


@dataclass
class SGDSchema:
    _target_: str = MISSING
    _partial_: bool = MISSING
    lr: float = MISSING
    momentum: float = MISSING
    weight_decay: float = MISSING
    dampening: float = 0.0
    nesterov: bool = False

    def __post_init__(self):
        require_rate(self.lr, self.weight_decay)
        require(0 <= self.momentum < 1, "optimizer.momentum", self.momentum, "must be in [0, 1)")


@dataclass
class AdamSchema:
    _target_: str = MISSING
    _partial_: bool = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    amsgrad: bool = False

    def __post_init__(self):
        require_rate(self.lr, self.weight_decay)
        require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "optimizer.betas",
            list(self.betas),
            "must be two numbers in [0, 1)",
        )


# --- scheduler/ ---------------------------------------------------------------------------------


@dataclass
class SchedulerSchema:
    """Lightning's lr_scheduler dict, with the partial torch schedule under `schedule`."""

    interval: str = MISSING
    schedule: Any = MISSING
    frequency: int = 1
    monitor: str | None = None
    name: str = "train/lr"  # the tag LearningRateMonitor logs the rate under

    def __post_init__(self):
        one_of("scheduler.interval", self.interval, ("step", "epoch"))
        require(self.frequency >= 1, "scheduler.frequency", self.frequency, "must be at least 1")


@dataclass
class CosineSchema:
    _target_: str = MISSING
    _partial_: bool = MISSING
    eta_min: float = MISSING
    T_max: int | None = None  # None: the run's length (src/modules/supervised.py)

    def __post_init__(self):
        require(self.eta_min >= 0, "scheduler.schedule.eta_min", self.eta_min, "must be >= 0")


@dataclass
class OneCycleSchema:
    _target_: str = MISSING
    _partial_: bool = MISSING
    max_lr: float = MISSING
    pct_start: float = MISSING
    total_steps: int | None = None  # None: the run's length

    def __post_init__(self):
        require(self.max_lr > 0, "scheduler.schedule.max_lr", self.max_lr, "must be > 0")
        require(0 < self.pct_start < 1, "scheduler.schedule.pct_start", self.pct_start,
                "must be between 0 and 1")  # fmt: skip


@dataclass
class StepLRSchema:
    _target_: str = MISSING
    _partial_: bool = MISSING
    step_size: int = MISSING
    gamma: float = MISSING

    def __post_init__(self):
        require(self.step_size >= 1, "scheduler.schedule.step_size", self.step_size,
                "must be at least 1")  # fmt: skip
        require(self.gamma > 0, "scheduler.schedule.gamma", self.gamma, "must be > 0")


@dataclass
class PlateauSchema:
    _target_: str = MISSING
    _partial_: bool = MISSING
    mode: str = MISSING
    factor: float = MISSING
    patience: int = MISSING

    def __post_init__(self):
        one_of("scheduler.schedule.mode", self.mode, ("min", "max"))
        require(0 < self.factor < 1, "scheduler.schedule.factor", self.factor,
                "must be between 0 and 1")  # fmt: skip
        require(self.patience >= 0, "scheduler.schedule.patience", self.patience, "must be >= 0")


# --- data/ --------------------------------------------------------------------------------------


@dataclass
class MNISTSchema:
    _target_: str = MISSING
    data_dir: str = MISSING
    dataset: str = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    val_size: int = MISSING
    train_size: int | None = MISSING
    split_seed: int = MISSING
    normalize: bool = MISSING
    download: bool = MISSING
    seed: int = MISSING

    def __post_init__(self):
        one_of("data.dataset", self.dataset, DATASETS)
        for key in ("batch_size", "eval_batch_size", "val_size"):
            value = getattr(self, key)
            require(value >= 1, f"data.{key}", value, "must be at least 1")
        require(self.val_size < 60_000, "data.val_size", self.val_size, "must be below 60000")
        if self.train_size is not None:
            require(self.train_size >= 1, "data.train_size", self.train_size, "must be at least 1")


@dataclass
class LogicGateDataSchema:
    _target_: str = MISSING
    gate: str = MISSING
    steps_per_epoch: int = MISSING

    def __post_init__(self):
        one_of("data.gate", self.gate, GATES)
        require(self.steps_per_epoch >= 1, "data.steps_per_epoch", self.steps_per_epoch,
                "must be at least 1")  # fmt: skip


# --- model/ and model/net/ ----------------------------------------------------------------------


@dataclass
class ModuleSchema:
    _target_: str = MISSING
    net: Any = MISSING


@dataclass
class HiddenLayerSchema:
    """DigitClassifier and LogicGateNet: one hidden layer."""

    _target_: str = MISSING
    hidden_dim: int = MISSING
    activation: str = MISSING

    def __post_init__(self):
        require(self.hidden_dim >= 1, "model.net.hidden_dim", self.hidden_dim, "must be at least 1")
        one_of("model.net.activation", self.activation, ACTIVATIONS)


@dataclass
class MLPSchema:
    _target_: str = MISSING
    hidden_dims: list[int] = MISSING
    activation: str = MISSING

    def __post_init__(self):
        require(all(d >= 1 for d in self.hidden_dims), "model.net.hidden_dims",
                list(self.hidden_dims), "must hold widths of at least 1")  # fmt: skip
        one_of("model.net.activation", self.activation, ACTIVATIONS)


@dataclass
class CNNSchema:
    _target_: str = MISSING
    channels: list[int] = MISSING
    hidden_dim: int = MISSING
    activation: str = MISSING

    def __post_init__(self):
        # Each block halves the 28-pixel image: after 4 there is 1 pixel left.
        require(1 <= len(self.channels) <= 4 and all(c >= 1 for c in self.channels),
                "model.net.channels", list(self.channels),
                "must hold 1 to 4 channel counts of at least 1")  # fmt: skip
        require(self.hidden_dim >= 1, "model.net.hidden_dim", self.hidden_dim, "must be at least 1")
        one_of("model.net.activation", self.activation, ACTIVATIONS)


# --- trainer/ -----------------------------------------------------------------------------------


def is_batch_limit(value) -> bool:
    """Lightning's limit_*_batches and overfit_batches: a count, or a fraction of the batches."""
    return (is_count(value) and value >= 0) or (isinstance(value, float) and 0 <= value <= 1)


# Lightning's Trainer signature is read from its source file, not imported: importing Lightning
# takes seconds (6.4 s on this repository's machine, this module 0.25 s), and a command line is
# checked before it. tests/test_config.py holds the fields to the signature Python reads.
TRAINER_SOURCE = ("lightning", "pytorch", "trainer", "trainer.py")  # lightning.pytorch.Trainer's
BUILT_ELSEWHERE = ("logger", "callbacks")  # the logger/ and callbacks/ groups, src/train.py
# A type OmegaConf can check where Lightning's annotation is a union of numbers: a float holds
# both, and means the same to Lightning here (unlike limit_*_batches, where 1 and 1.0 differ).
TRAINER_TYPES = {"gradient_clip_val": float | None}
PLAIN_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


def union_members(annotation: ast.expr) -> list[str]:
    """The types an annotation allows, as written: `Optional[Union[int, float]]` is int, float,
    None."""
    if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):
        return union_members(annotation.left) + union_members(annotation.right)
    outer = ast.unparse(annotation.value) if isinstance(annotation, ast.Subscript) else None
    if outer not in ("Optional", "Union"):
        return [ast.unparse(annotation)]
    inner = annotation.slice
    members = [m for e in getattr(inner, "elts", [inner]) for m in union_members(e)]
    return members + ["None"] if outer == "Optional" else members


def omegaconf_type(annotation: ast.expr, default) -> Any:
    """An annotation as OmegaConf can check it: one plain type, or None too; anything else (a
    union of types, a class, an alias) Any."""
    members = union_members(annotation)
    kinds = [m for m in members if m != "None"]
    if len(kinds) != 1 or kinds[0] not in PLAIN_TYPES:
        return Any
    kind = PLAIN_TYPES[kinds[0]]
    return kind | None if "None" in members or default is None else kind


def trainer_fields() -> list[tuple[str, Any, Any]]:
    """Lightning's Trainer arguments as dataclass fields: name, type, Lightning's own default."""
    root = Path(importlib.util.find_spec(TRAINER_SOURCE[0]).submodule_search_locations[0])
    tree = ast.parse(root.joinpath(*TRAINER_SOURCE[1:]).read_text(encoding="utf-8"))
    trainer = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Trainer")
    init = next(n for n in trainer.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    fields = []
    for arg, default_node in zip(init.args.kwonlyargs, init.args.kw_defaults, strict=True):
        if arg.arg in BUILT_ELSEWHERE:
            continue
        default = ast.literal_eval(default_node)
        kind = TRAINER_TYPES.get(arg.arg) or omegaconf_type(arg.annotation, default)
        fields.append((arg.arg, kind, default))
    return fields


class TrainerChecks:
    """The ranges of the Trainer arguments, checked before Lightning is imported."""

    def __post_init__(self):
        one_of("trainer.accelerator", self.accelerator, ("auto", "cpu", "gpu", "cuda", "mps"))
        devices = self.devices
        require(
            devices == "auto"
            or (is_count(devices) and (devices >= 1 or devices == -1))
            or (isinstance(devices, str) and devices.lstrip("-").isdigit() and int(devices) != 0)
            or (isinstance(devices, list) and devices and all(is_count(d) for d in devices)),
            "trainer.devices", devices, "must be auto, -1 (all), a count of at least 1 or a "
            "list of device indices",
        )  # fmt: skip
        require(self.num_nodes >= 1, "trainer.num_nodes", self.num_nodes, "must be at least 1")
        precisions = ("16-mixed", "bf16-mixed", "32-true", "64-true", "16-true", "bf16-true",
                      "16", "bf16", "32", "64", 16, 32, 64, None)  # fmt: skip
        one_of("trainer.precision", self.precision, precisions)
        require(self.fast_dev_run is True or self.fast_dev_run is False
                or (is_count(self.fast_dev_run) and self.fast_dev_run >= 0),
                "trainer.fast_dev_run", self.fast_dev_run,
                "must be true, false or a number of batches")  # fmt: skip
        for key in ("max_epochs", "max_steps"):
            value = getattr(self, key)
            require(value is None or value == -1 or value >= 1, f"trainer.{key}", value,
                    "must be -1 (no limit) or at least 1")  # fmt: skip
        for key in ("min_epochs", "min_steps", "reload_dataloaders_every_n_epochs"):
            value = getattr(self, key)
            require(value is None or value >= 0, f"trainer.{key}", value, "must be >= 0")
        for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches",
                    "limit_predict_batches", "overfit_batches"):  # fmt: skip
            value = getattr(self, key)
            require(value is None or is_batch_limit(value), f"trainer.{key}", value,
                    "must be a number of batches (0 or more) or a fraction in [0, 1]")  # fmt: skip
        interval = self.val_check_interval
        require(
            interval is None
            or (is_count(interval) and interval >= 1)
            or (isinstance(interval, float) and 0 < interval <= 1),
            "trainer.val_check_interval", interval,
            "must be a number of training batches (1 or more) or a fraction of the epoch in (0, 1]",
        )  # fmt: skip
        check = self.check_val_every_n_epoch
        require(check is None or check >= 1, "trainer.check_val_every_n_epoch", check,
                "must be at least 1, or null to count val_check_interval over epochs")  # fmt: skip
        sanity = self.num_sanity_val_steps
        require(sanity is None or sanity >= -1, "trainer.num_sanity_val_steps", sanity,
                "must be -1 (all) or at least 0")  # fmt: skip
        every = self.log_every_n_steps
        require(every is None or every >= 1, "trainer.log_every_n_steps", every,
                "must be at least 1")  # fmt: skip
        require(self.accumulate_grad_batches >= 1, "trainer.accumulate_grad_batches",
                self.accumulate_grad_batches, "must be at least 1")  # fmt: skip
        clip = self.gradient_clip_val
        require(clip is None or clip >= 0, "trainer.gradient_clip_val", clip, "must be >= 0")
        one_of("trainer.gradient_clip_algorithm", self.gradient_clip_algorithm,
               ("norm", "value", None))  # fmt: skip
        one_of("trainer.deterministic", self.deterministic, (True, False, "warn", None))
        if not isinstance(self.profiler, dict):  # a node is built from its _target_
            one_of("trainer.profiler", self.profiler, ("simple", "advanced", "pytorch", None))


TrainerSchema = dataclasses.make_dataclass(
    "TrainerSchema",
    [("_target_", str, MISSING), *trainer_fields()],
    bases=(TrainerChecks,),
    namespace={"__module__": __name__, "__doc__": "Lightning's Trainer arguments, typed."},
)


# --- callbacks ----------------------------------------------------------------------------------


@dataclass
class DigitPicturesSchema:
    _target_: str = MISSING
    histograms: bool = MISSING


@dataclass
class GatePicturesSchema:
    _target_: str = MISSING
    resolution: int = MISSING

    def __post_init__(self):
        require(self.resolution >= 2, "callbacks.gate_pictures.resolution", self.resolution,
                "must be at least 2")  # fmt: skip


# --- the run ------------------------------------------------------------------------------------


@dataclass
class MonitorSchema:
    """The experiment's measure of success: best checkpoint, early stopping, sweep order."""

    metric: str = MISSING
    mode: str = MISSING

    def __post_init__(self):
        one_of("monitor.mode", self.mode, ("min", "max"))


@dataclass
class TrainSchema:
    """The top-level keys of conf/train.yaml; each group is typed by its own schema."""

    name: str = MISSING
    seed: int = MISSING
    ckpt_path: str | None = MISSING
    lr_find: bool = MISSING
    threads: int | None = MISSING
    monitor: MonitorSchema = MISSING
    data: Any = MISSING
    model: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    trainer: Any = MISSING
    logger: Any = MISSING
    callbacks: Any = MISSING
    paths: Any = MISSING

    def __post_init__(self):
        require(0 <= self.seed < 2**32, "seed", self.seed, "must be in [0, 2**32)")
        if self.threads is not None:
            require(self.threads >= 1, "threads", self.threads, "must be at least 1 (or null)")


SCHEMAS = {
    "optimizer": {"sgd": SGDSchema, "adam": AdamSchema},
    "scheduler": {
        "base": SchedulerSchema,
        "cosine": CosineSchema,
        "onecycle": OneCycleSchema,
        "step": StepLRSchema,
        "plateau": PlateauSchema,
    },  # fmt: skip
    "data": {"mnist": MNISTSchema, "logic_gate": LogicGateDataSchema},
    "model": {"module": ModuleSchema},
    "net": {"hidden_layer": HiddenLayerSchema, "mlp": MLPSchema, "cnn": CNNSchema},
    "trainer": {"trainer": TrainerSchema},
    "callbacks": {"digit_pictures": DigitPicturesSchema, "gate_pictures": GatePicturesSchema},
}


def run_dir() -> str:
    """This run's directory (Hydra's runtime.output_dir). Before a run has one, as when
    `--cfg job --resolve` prints the config, Hydra has not set it: then the interpolation that
    names it, left as written, so that a path built on it never reads `None/checkpoints`."""
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    output_dir = OmegaConf.select(hydra_cfg, "runtime.output_dir") if hydra_cfg else None
    return output_dir or "${hydra:runtime.output_dir}"


def register() -> None:
    """Make the schemas and the resolvers available to the configs under conf/."""
    # A short random id in every output directory name: runs started in the same second never
    # share a directory. Cached, so every reference in one config (and a sweep's jobs) agrees.
    OmegaConf.register_new_resolver(
        "uid", lambda: uuid.uuid4().hex[:6], use_cache=True, replace=True
    )
    OmegaConf.register_new_resolver("job_dirname", job_dirname, replace=True)
    OmegaConf.register_new_resolver("run_dir", run_dir, replace=True)
    OmegaConf.register_new_resolver("help_group", help_group, replace=True)  # --help's lines
    store = ConfigStore.instance()
    # Under schema/ rather than in the groups themselves, so that Hydra's list of a group's
    # options (shown for a typo like optimizer=sgdd) holds only the real choices.
    store.store(group="schema", name="train", node=TrainSchema)
    for group, schemas in SCHEMAS.items():
        for name, node in schemas.items():
            store.store(group=f"schema/{group}", name=name, node=node)


def validate(cfg: DictConfig) -> None:
    """Check that every typed node holds only its own keys, within their ranges (a `ckpt_path`
    is checked where it is read, src/checkpoints.py)."""
    refuse_unknown_keys(cfg)
    OmegaConf.to_object(cfg)  # builds each schema's dataclass, which runs its __post_init__
    build_optimizer_once(cfg)


def build_optimizer_once(cfg: DictConfig) -> None:
    """Build the optimizer on a stand-in weight and its schedule on it, and take a step of each:
    a value PyTorch refuses, of an optimizer or schedule with no schema here too (a new one is
    one YAML file), is then one line naming the key, before any data is read."""
    import torch  # here, after the checks that need no torch
    from hydra.utils import instantiate

    weight = torch.nn.Parameter(torch.zeros(1))
    weight.grad = torch.zeros(1)  # so that the step computes with every value
    with refused_naming_the_key("optimizer", cfg.optimizer):
        optimizer = instantiate(cfg.optimizer)([weight])
        optimizer.step()
    if not cfg.scheduler:
        return
    node = cfg.scheduler.schedule
    with refused_naming_the_key("scheduler.schedule", node):
        schedule = instantiate(node)
        # A stand-in length for one that runs over the whole run (src/schedules.py).
        scheduler = schedule(optimizer, **run_length(schedule, 100))
        optimizer.step()
        # Lightning hands ReduceLROnPlateau the monitored value; any number stands in for it.
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(0.0)
        else:
            scheduler.step()


@contextlib.contextmanager
def refused_naming_the_key(key: str, node: DictConfig):
    """Building and stepping the config's `key` (its `node`): a value its class refuses, at its
    __init__ (which Hydra wraps in InstantiationException) or at its first step (where a schedule
    first computes with its own), said in one line naming the key and the class, e.g.
    `optimizer.lr (torch.optim.RMSprop): Invalid learning rate: -1`. Anything else, as a _target_
    that does not exist, keeps its own words and traceback."""
    try:
        yield
    except (TypeError, ValueError, ArithmeticError, InstantiationException) as err:
        cause = err.__cause__ if isinstance(err, InstantiationException) else err
        if not isinstance(cause, (TypeError, ValueError, ArithmeticError)):
            raise
        said = (str(cause).strip() or type(cause).__name__).splitlines()[0]
        named = named_key(node, said)
        where = f"{key}.{named}" if named else key
        raise ConfigError(f"{where} ({node.get('_target_')}): {said}") from None


def named_key(node: DictConfig, said: str) -> str | None:
    """The one setting of `node` a message is about: the one it names (`Invalid momentum value`),
    or else the one whose value it quotes (`Invalid learning rate: -1`); None if not just one."""
    words = set(re.findall(r"[\w.+-]+", said.lower()))
    settings = {k: v for k, v in node.items() if not str(k).startswith("_")}
    for found in (
        [k for k in settings if str(k).lower() in words],
        [k for k, v in settings.items() if str(v).lower() in words],
    ):
        if len(found) == 1:
            return str(found[0])
    return None


def refuse_unknown_keys(node: DictConfig, path: str = "") -> None:
    """`+trainer.foo=1` adds a key even to a typed node; refuse what its schema does not know."""
    schema = OmegaConf.get_type(node)
    typed = dataclasses.is_dataclass(schema)
    known = {f.name for f in dataclasses.fields(schema)} if typed else set()
    for key, value in node.items_ex(resolve=False):
        name = f"{path}{key}"
        if typed and key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {path}{close[0]}?" if close else "no such name in its group"
            raise ConfigError(f"{name} is not a setting: {hint}")
        if isinstance(value, DictConfig):
            refuse_unknown_keys(value, f"{name}.")
