"""Typed schemas for the configs under conf/, registered in Hydra's ConfigStore.

Hydra checks every override against them while it composes the config, so `optimizer.lr=abc`,
`optimizer.lrr=0.1` or `+trainer.foo=1` fail with Hydra's message naming the key. The schemas of
the library's classes and of the project's own that conf/ names, the Trainer's and Lightning's
lr_scheduler dict's are made from their signatures: their names, types and defaults, so that
`trainer.gradient_clip_val=1` or `optimizer.nesterov=true` can be typed though no YAML sets
them. The ranges are the classes' own checks: `validate` builds the optimizer and its schedule
once on a stand-in weight, before any data is read, so that a value PyTorch refuses is one line
naming the key, for an optimizer or schedule with no schema too; src/build.py builds the network
and the data, whose own checks (src/checks.py) name the key likewise, and the Trainer, whose
Lightning checks its own. `validate` checks, before Lightning is imported, the run's ranges and
the few Trainer values Lightning takes without a word but cannot train with.

The YAML files hold the values and pick their schema in their defaults list.
"""

import contextlib
import dataclasses
import difflib
import functools
import math
import re
import uuid
from dataclasses import dataclass
from typing import Any

import yaml
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import MISSING, DictConfig, OmegaConf

from src import checks
from src.command_line import CONF, help_group
from src.errors import ConfigError
from src.job_names import job_dirname
from src.schedules import run_length
from src.signatures import signature_fields, signed_schema

require = functools.partial(checks.require, error=ConfigError)
one_of = functools.partial(checks.one_of, error=ConfigError)


# --- optimizer/, scheduler/, data/, model/net/, pictures/: schemas from signatures ----------------


# The classes a YAML file of conf/ types itself with, by `/schema/<group>/<class name>@<where>`
# in its defaults list (the `_target_` at <where> names the class): each schema is the class's own
# arguments, types and defaults (src/signatures.py), made for the classes those files name. Their
# ranges are the classes' own checks: `validate` builds the optimizer and its schedule once,
# src/build.py the network and the data. A YAML file for a class no file of conf/ types (a new
# optimizer, a network of one's own) is typed by those checks alone.
def signed_targets() -> dict[str, list[str]]:
    """{group: [class path, ...]} of the signed schemas conf/'s YAML files ask for."""
    signed = {}
    for path in sorted(CONF.rglob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        if "/schema/" not in text:  # most files: not parsed, at every command's start
            continue
        config = yaml.safe_load(text) or {}
        for entry in config.get("defaults") or []:
            if not (isinstance(entry, str) and entry.startswith("/schema/")):
                continue
            group, _, name = entry.removeprefix("/schema/").partition("/")
            name, _, where = name.partition("@")
            node = config if where in ("", "_here_") else config.get(where) or {}
            target = str(node.get("_target_", ""))
            if target.rpartition(".")[2] == name:  # not a hand-made schema (SCHEMAS)
                signed.setdefault(group, [])
                if target not in signed[group]:
                    signed[group].append(target)
    return signed


# An optimizer or a schedule is a partial the module hands its first argument (the parameters, the
# optimizer); its keyword-only arguments (foreach, fused, ...) choose an implementation, not a
# setting. A schedule's last_epoch is its state, which Lightning restores from a checkpoint.
PARTIAL = {"optimizer": (), "scheduler": ("last_epoch",)}
# Values PyTorch's optimizers take but that no run trains with (an infinite rate, a momentum of 2),
# refused for any optimizer once PyTorch's own checks have passed.
TRAINABLE = {
    "lr": (lambda v: math.isfinite(v) and v > 0, "must be a finite number > 0"),
    "weight_decay": (lambda v: math.isfinite(v) and v >= 0, "must be a finite number >= 0"),
    "momentum": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
}


def require_trainable(optimizer: DictConfig) -> None:
    """Refuse an optimizer's rate, decay or momentum that PyTorch takes but no run trains with."""
    for key, (ok, expectation) in TRAINABLE.items():
        value = optimizer.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            require(ok(value), f"optimizer.{key}", value, expectation)


# --- scheduler/ ---------------------------------------------------------------------------------


class SchedulerChecks:
    def __post_init__(self):
        one_of("scheduler.interval", self.interval, ("step", "epoch"))
        require(self.frequency >= 1, "scheduler.frequency", self.frequency, "must be at least 1")


# Lightning's lr_scheduler dict: its LRSchedulerConfig's fields, read as the Trainer's are, with
# the partial torch schedule under `schedule` in place of the built one (and reduce_on_plateau,
# which Lightning sets itself, left out). The rate's tag is the project's: LearningRateMonitor
# logs it under this name.
SchedulerSchema = dataclasses.make_dataclass(
    "SchedulerSchema",
    [("schedule", Any, MISSING),
     *[(name, kind, "train/lr" if name == "name" else default) for name, kind, default in
       signature_fields("lightning.pytorch.utilities.types.LRSchedulerConfig", partial=False,
                        leave_out=("scheduler", "reduce_on_plateau"))]],
    bases=(SchedulerChecks,),
    namespace={"__module__": __name__, "__doc__": "Lightning's lr_scheduler dict, typed."},
)  # fmt: skip


# --- model/ -------------------------------------------------------------------------------------


@dataclass
class ModuleSchema:
    _target_: str = MISSING
    net: Any = MISSING


# --- trainer/ -----------------------------------------------------------------------------------


# Lightning's Trainer signature, read as the other classes' are (src/config.py takes 0.25 s to
# import, Lightning 6.4 s on this repository's machine); tests/test_config.py holds the fields of
# both to the signatures Python reads.
BUILT_ELSEWHERE = ("logger", "callbacks")  # the logger/ and callbacks/ groups, src/build.py
# A type OmegaConf can check where Lightning's annotation is a union of numbers: a float holds
# both, and means the same to Lightning here (unlike limit_*_batches, where 1 and 1.0 differ).
TRAINER_TYPES = {"gradient_clip_val": float | None}


def trainer_fields() -> list[tuple[str, Any, Any]]:
    """Lightning's Trainer arguments as dataclass fields: name, type, Lightning's own default."""
    fields = signature_fields("lightning.pytorch.Trainer", partial=False, leave_out=BUILT_ELSEWHERE)
    return [(name, TRAINER_TYPES.get(name, kind), default) for name, kind, default in fields]


class TrainerChecks:
    """What Lightning's Trainer takes without a word, then divides by or trains wrongly with.
    Its own checks (a negative max_epochs, limit_train_batches=-1, devices=0, an accelerator,
    precision or profiler it does not know, ...) speak when src/build.py builds it."""

    def __post_init__(self):
        for key in ("max_epochs", "max_steps"):  # Lightning's 0 trains nothing, then tests
            value = getattr(self, key)
            require(value != 0, f"trainer.{key}", value, "must be -1 (no limit) or at least 1")
        # Lightning counts these with `%`: 0 is a ZeroDivisionError deep in its loop.
        for key in ("accumulate_grad_batches", "check_val_every_n_epoch"):
            value = getattr(self, key)
            require(value != 0, f"trainer.{key}", value, "must be at least 1")
        interval = self.val_check_interval  # 0.0, a fraction of the epoch, Lightning takes
        require(
            interval != 0 or isinstance(interval, float),
            "trainer.val_check_interval",
            interval,
            "must be a number of batches (1 or more) or a fraction of the epoch",
        )
        # A negative norm flips every gradient: the run would climb its loss.
        clip = self.gradient_clip_val
        require(clip is None or clip >= 0, "trainer.gradient_clip_val", clip, "must be >= 0")
        one_of("trainer.deterministic", self.deterministic, (True, False, "warn", None))


TrainerSchema = dataclasses.make_dataclass(
    "TrainerSchema",
    [("_target_", str, MISSING), *trainer_fields()],
    bases=(TrainerChecks,),
    namespace={"__module__": __name__, "__doc__": "Lightning's Trainer arguments, typed."},
)


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
    "scheduler": {"base": SchedulerSchema},
    "model": {"module": ModuleSchema},
    "trainer": {"trainer": TrainerSchema},
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
    for group, targets in signed_targets().items():
        for target in targets:
            try:
                node = signed_schema(target, group in PARTIAL, PARTIAL.get(group, ()))
            except (LookupError, ImportError):  # no source found: Hydra's line names the schema
                continue  # when a config asks for it, and other commands run as ever
            store.store(group=f"schema/{group}", name=node.__name__, node=node)


def validate(cfg: DictConfig) -> None:
    """Check that every typed node holds only its own keys, within their ranges (a `ckpt_path`
    is checked where it is read, src/checkpoints.py)."""
    refuse_unknown_keys(cfg)
    OmegaConf.to_object(cfg)  # builds each schema's dataclass, which runs its __post_init__
    build_optimizer_once(cfg)  # PyTorch's own checks first, then what they let through
    require_trainable(cfg.optimizer)


def build_optimizer_once(cfg: DictConfig) -> None:
    """Build the optimizer on a stand-in weight and its schedule on it, and take a step of each:
    a value PyTorch refuses, of an optimizer or schedule with no schema here too (a new one is
    one YAML file), is then one line naming the key, before any data is read."""
    import torch  # here, after the checks that need no torch
    from hydra.utils import instantiate

    weight = torch.nn.Parameter(torch.zeros(1))
    weight.grad = torch.zeros(1)  # so that the step computes with every value
    with refused_in_one_line("optimizer", cfg.optimizer, name_the_key=True):
        optimizer = instantiate(cfg.optimizer)([weight])
        optimizer.step()
    if not cfg.scheduler:
        return
    if "schedule" not in cfg.scheduler:
        raise ConfigError("scheduler has no schedule: a scheduler's YAML holds Lightning's "
                          "lr_scheduler keys (interval, frequency, ...) and the torch schedule "
                          "under schedule: (see conf/scheduler/step.yaml)")  # fmt: skip
    node = cfg.scheduler.schedule
    with refused_in_one_line("scheduler.schedule", node, name_the_key=True):
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
def refused_in_one_line(key: str, node: DictConfig, name_the_key: bool = False, also=()):
    """Building (and stepping) the config's `key`, its `node`: a value its class refuses, at its
    __init__ (which Hydra wraps in InstantiationException) or at its first step (where a schedule
    first computes with its own), said in one line naming the key and the class, e.g.
    `data (moons.TwoMoons): noise must be >= 0` (a network that does not fit the task is refused so
    too, src/modules/supervised.py); with `name_the_key`, the setting the message is
    about too (`optimizer.lr (torch.optim.RMSprop): Invalid learning rate: -1`). A check of the
    project's own names its argument (src/checks.py): `model.net.hidden_dim=0 is out of range`.
    `also`: the further exceptions the class refuses a value with (Lightning's Trainer). Anything
    else, as a _target_ that does not exist, keeps its own words and traceback."""
    refusals = (TypeError, ValueError, ArithmeticError, *also)
    try:
        yield
    except (*refusals, InstantiationException) as err:
        cause = err.__cause__ if isinstance(err, InstantiationException) else err
        if not isinstance(cause, refusals):
            raise
        said = (str(cause).strip() or type(cause).__name__).splitlines()[0]
        name, is_, _ = said.partition("=")
        if is_ and name in node:
            raise ConfigError(f"{key}.{said}") from None
        named = named_key(node, said) if name_the_key else None
        where = f"{key}.{named}" if named else key
        raise ConfigError(f"{where} ({node.get('_target_')}): {said}") from None


def named_key(node: DictConfig, said: str) -> str | None:
    """The one setting of `node` a message is about: the one it names (`Invalid momentum value`,
    `Invalid beta parameter` for betas), or else the one whose value it quotes (`Invalid learning
    rate: -1`); None if not just one."""
    words = set(re.findall(r"[\w.+-]+", said.lower()))
    settings = {k: v for k, v in node.items() if not str(k).startswith("_")}
    for found in (
        [k for k in settings if {str(k).lower(), str(k).lower().removesuffix("s")} & words],
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
