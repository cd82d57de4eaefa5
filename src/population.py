"""A sweep's jobs trained as one population (`hydra/launcher=population`): the jobs that can share
a training loop are fitted together, in one Lightning fit of a module that holds them all, and
each leaves the folder it would leave alone.

Who trains together: jobs whose configs are equal but for the optimizer (its class and values:
SGD or Adam, learning rate, momentum, betas, ...), the values of the schedule (a decay's gamma,
OneCycle's max_lr, ...), the gradient clipping, the seed (each member's initialization and its
own order of the training batches) and the run's name: the same network, data, batch size,
schedule class, trainer and callbacks. A job trains alone, as under the basic launcher, when no
other job shares its loop, or when it asks for what a population cannot give it (see
`alone_because`). With `hydra.launcher.n_jobs` above 1, the populations and the jobs alone are
shared out among that many worker processes (`share_out`).

Each member's update is the one it would get alone: each member has its own PyTorch optimizer
and schedule, built as its run alone builds them; the population's loss is the sum of the
members' losses (the gradient of a sum is each member's own), and Lightning's optimizer step is
each member's own optimizer's step, its schedule step each member's schedule's
(src/population_module.py, MemberSteps). Each member's code runs with its own random-number
state.

Each member sees the run it would see alone: its callbacks (checkpoints, pictures, epoch table,
learning-rate monitor, ...) and loggers get a view of the trainer (`MemberTrainer`) that shows
its own module, metrics, loggers, optimizer and checkpoints, and its checkpoints are those its
run alone would write, so that `src.eval`, `src.predict` and a resume alone take them as they are.
"""

import contextlib
import contextvars
import dataclasses
import functools
import json
import logging
import math
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, run_job
from omegaconf import DictConfig, OmegaConf

from src import sigterm
from src.names import LAST_CKPT, RECORD
from src.records import read_json

log = logging.getLogger(__name__)

# The modules, callbacks and loggers a member may have: ours, whose every hook a member's view of
# the trainer answers as its run alone would. Anything else (a user's callback with a per-step
# hook, say) trains alone.
MODULES = ("src.modules.DigitModule", "src.modules.GateModule")
CALLBACKS = (
    "src.callbacks.BestCheckpoint", "src.callbacks.RunCheckpoint", "src.callbacks.CheckpointOnStop",
    "src.callbacks.EpochProgressBar", "src.callbacks.EpochTable", "src.callbacks.DigitPictures",
    "src.callbacks.GatePictures", "src.callbacks.TruthTable",
    "lightning.pytorch.callbacks.ModelSummary", "lightning.pytorch.callbacks.LearningRateMonitor",
)  # fmt: skip
LOGGERS = ("src.loggers.TensorBoardLogger", "src.loggers.CSVLogger")
# The datamodules whose seed (`data.seed`, the run's by default) chooses the order of the
# training batches and nothing else: their validation and test sets are every member's, whatever
# its seed (MNIST's split follows data.split_seed; the gates' table is fixed).
SEED_ORDERS_ONLY = ("src.data.MNISTDataModule", "src.data.LogicGateDataModule")
SEPARATOR = "|"  # a member's logged names: "<index>|train/loss"
MEMBER = contextvars.ContextVar("member", default=None)  # whose code is running now


# --- who trains together ------------------------------------------------------------------------


def alone_because(cfg: DictConfig, run_dir: Path) -> str | None:
    """Why this job cannot be a population's member; None if it can."""
    from src.run_record import FINISHED

    previous = read_json(run_dir / RECORD) or {}
    if previous.get("status") in FINISHED:
        return "it finished earlier"
    if cfg.get("ckpt_path") or (run_dir / LAST_CKPT).is_file():
        return "it continues from its own checkpoint"
    if cfg.get("lr_find"):
        return "lr_find=true tries learning rates on its own network"
    trainer = cfg.trainer
    if trainer.get("devices", 1) not in (1, "1") or trainer.get("num_nodes", 1) != 1:
        return "it trains on several devices (DDP)"
    if str(trainer.get("precision")) in ("16", "16-mixed"):
        return "float16 mixed precision scales the whole population's loss by one factor"
    if "LBFGS" in str(cfg.optimizer.get("_target_")):
        return "LBFGS evaluates its own run's loss again within its step"
    if cfg.model.get("_target_") not in MODULES:
        return f"its module {cfg.model.get('_target_')} is not one a population can hold"
    for key, node in (cfg.get("callbacks") or {}).items():
        if node is not None and node.get("_target_") not in CALLBACKS:
            return f"its callback {key} ({node.get('_target_')}) would see the whole population"
    for key, node in (cfg.get("logger") or {}).items():
        if node is not None and node.get("_target_") not in LOGGERS:
            return f"its logger {key} ({node.get('_target_')}) is not one a member can have"
    schedule = (cfg.get("scheduler") or {}).get("schedule") or {}
    if "ReduceLROnPlateau" in str(schedule.get("_target_")):
        return "ReduceLROnPlateau follows its own run's metric"
    return None


def loop_key(cfg: DictConfig) -> str:
    """What members of one population share: the whole config, less the optimizer (each member
    steps its own), the values of the schedule (its class stays, and its interval), the gradient
    clipping, the run's name and, for data whose seed only orders the training batches, the seed
    (each member's initialization and order are its own)."""
    plain = settled(cfg)
    plain.pop("hydra", None)
    plain.pop("name", None)
    data = plain.get("data") or {}
    if data.get("_target_") in SEED_ORDERS_ONLY:  # each member draws its own batches
        plain.pop("seed", None)
        data.pop("seed", None)
    plain.pop("optimizer", None)
    for key in ("gradient_clip_val", "gradient_clip_algorithm"):  # each member clips its own
        (plain.get("trainer") or {}).pop(key, None)
    if plain.get("scheduler"):  # each member steps its own schedule over its own optimizer
        schedule = plain["scheduler"].get("schedule") or {}
        plain["scheduler"]["schedule"] = {k: v for k, v in schedule.items()
                                          if k in ("_target_", "_partial_")}  # fmt: skip
    return json.dumps(plain, sort_keys=True, default=str)


def settled(node):
    """A config as plain values, each interpolation resolved where it resolves before the job
    runs; one that needs the job's own run (its folder) is left as written."""
    if not OmegaConf.is_config(node):
        return node
    keys = range(len(node)) if OmegaConf.is_list(node) else list(node.keys())
    values = []
    for key in keys:
        try:
            value = node[key]
        except Exception:  # an interpolation of the job's run, as ${hydra:runtime.output_dir}
            value = OmegaConf.to_container(node, resolve=False)[key]
        values.append(settled(value))
    return values if OmegaConf.is_list(node) else dict(zip(keys, values, strict=True))


def job_dir(cfg: DictConfig) -> Path:
    return Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)


def plan(configs: list[DictConfig]) -> tuple[list[list[int]], dict[int, str]]:
    """The sweep's populations (lists of job indices, in sweep order) and the jobs that train
    alone, each with why."""
    alone, groups = {}, {}
    for index, cfg in enumerate(configs):
        reason = alone_because(cfg, job_dir(cfg))
        if reason:
            alone[index] = reason
        else:
            groups.setdefault(loop_key(cfg), []).append(index)
    populations = []
    for members in groups.values():
        if len(members) == 1:
            alone[members[0]] = "no other job shares its training loop"
        else:
            populations.append(members)
    return populations, alone


def launch(configs: list[DictConfig], hydra_context, task_function,
           workers: int = 1) -> list[JobReturn]:  # fmt: skip
    """Run the sweep's jobs: each population as one fit, the others one by one, in this process or
    shared out among `workers` processes; their returns in the sweep's order."""
    populations, alone = plan(configs)
    tasks = share_out(populations, sorted(alone), workers)
    for task in tasks:
        if len(task) == 1:
            log.info("%s trains alone: %s", job_dir(configs[task[0]]).name, alone[task[0]])
        else:
            names = ", ".join(job_dir(configs[i]).name for i in task)
            log.info("population of %d trains together: %s", len(task), names)
    jobs = [[configs[i] for i in task] for task in tasks]
    if workers == 1:
        returns = [run_task(task, hydra_context, task_function) for task in jobs]
    else:
        from hydra.core.singleton import Singleton
        from joblib import Parallel, delayed

        state = Singleton.get_state()
        returns = Parallel(n_jobs=workers, backend="loky")(
            delayed(run_task)(task, hydra_context, task_function, state) for task in jobs
        )
    runs = {i: ret for task, rets in zip(tasks, returns, strict=True)
            for i, ret in zip(task, rets, strict=True)}  # fmt: skip
    return [runs[i] for i in range(len(configs))]


def share_out(populations: list[list[int]], alone: list[int], workers: int) -> list[list[int]]:
    """The sweep's tasks, largest first: each population, and each job alone. While the workers
    outnumber the tasks, the largest population of four or more is split in two (a population
    shares less, but both halves train at once)."""
    tasks = [list(p) for p in populations] + [[i] for i in alone]
    while len(tasks) < workers:
        largest = max(tasks, key=len)
        if len(largest) < 4:
            break
        tasks.remove(largest)
        half = (len(largest) + 1) // 2
        tasks += [largest[:half], largest[half:]]
    return sorted(tasks, key=len, reverse=True)


def run_task(task: list[DictConfig], hydra_context, task_function,
             singleton_state: dict | None = None) -> list[JobReturn]:  # fmt: skip
    """A job alone (as Hydra's basic launcher runs it) or a population; in a worker process,
    Hydra's state first, as Hydra's joblib launcher sets it in its workers."""
    if singleton_state is not None:
        from hydra.core.singleton import Singleton
        from hydra.core.utils import setup_globals

        setup_globals()
        Singleton.set_state(singleton_state)
    if len(task) > 1:
        return train_population(task, hydra_context)
    ret = run_job(hydra_context=hydra_context, task_function=task_function, config=task[0],
                  job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")  # fmt: skip
    return [ret]


# --- one population -----------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class Member:
    """One job of a population: its config, folder, module and what its run alone would have."""

    index: int
    cfg: DictConfig
    run_dir: Path
    overrides: list[str]
    module: object = None
    datamodule: object = None
    callbacks: list = dataclasses.field(default_factory=list)
    loggers: list = dataclasses.field(default_factory=list)
    optimizer: object = None  # its own optimizer and schedule (stepped with the others')
    schedule: object = None
    clipping: tuple = (None, None)  # its run's gradient_clip_val and _algorithm, as Lightning's
    loader: int = 0  # which of the population's training loaders is its own (PopulationData)
    outputs: dict | None = None  # its last training step's, as Lightning hands them on
    random_state: object = None
    view: object = None
    record: dict | None = None  # written once it ends
    active: bool = True

    @contextlib.contextmanager
    def running(self):
        """Run this member's code: with its random numbers (the CPU's, and its GPU's when it is
        on one), its lines in its own train.log."""
        import torch

        device = getattr(self.module, "device", None)
        cuda = torch.cuda if device is not None and device.type == "cuda" else None
        token = MEMBER.set(self.index)
        outer = torch.get_rng_state(), cuda.get_rng_state(device) if cuda else None
        torch.set_rng_state(self.random_state[0])
        if cuda:
            cuda.set_rng_state(self.random_state[1] if self.random_state[1] is not None
                               else outer[1], device)  # fmt: skip
        try:
            yield
        finally:
            self.random_state = torch.get_rng_state(), cuda.get_rng_state(device) if cuda else None
            torch.set_rng_state(outer[0])
            if cuda:
                cuda.set_rng_state(outer[1], device)
            MEMBER.reset(token)


def train_population(configs: list[DictConfig], hydra_context) -> list[JobReturn]:
    """Set up each member in its own folder (through Hydra's run_job, as a job alone), fit them
    together, test them, and write each member's record."""
    from src.run_record import failed, objective

    everyone, returns = [], []
    with contextlib.ExitStack() as held:
        for index, cfg in enumerate(configs):
            member = Member(index, cfg, job_dir(cfg), [])
            task = functools.partial(prepare, member, held)
            returns.append(run_job(hydra_context=hydra_context, task_function=task, config=cfg,
                                   job_dir_key="hydra.sweep.dir",
                                   job_subdir_key="hydra.sweep.subdir"))  # fmt: skip
            everyone.append(member)
        members = [m for m in everyone if m.module is not None]  # those set up
        if members:
            with member_logs(members):
                try:
                    fit_and_test(members)
                except Exception as err:  # the population's own fit: every member it held
                    for m in members:
                        if m.active:
                            m.record = failed(err, m.cfg, m.run_dir, m.overrides, in_sweep=True)
    for ret, member in zip(returns, everyone, strict=True):
        if member.record is not None:
            ret.return_value = objective(member.record, member.cfg)
    return returns


def prepare(member: Member, held: contextlib.ExitStack, cfg: DictConfig) -> float:
    """Hydra's task for a member: what `src.train` does before fitting, in the member's folder
    (its config checked, seeded, its data, module, callbacks and loggers built). Returns NaN,
    replaced by the member's objective once the population has trained."""
    from src.build import load_training_stack
    from src.console import quiet_console
    from src.run_dirs import sole_writer
    from src.run_record import failed

    member.overrides = list(HydraConfig.get().overrides.task)
    sigterm.listen()
    if sigterm.received():
        log.warning("%s not started: the sweep was stopped by SIGTERM", member.run_dir)
        return math.nan
    if not held.enter_context(sole_writer(member.run_dir)):
        log.warning("%s is being trained by another process: skipped here", member.run_dir)
        return math.nan
    try:
        from src.config import validate

        validate(cfg)
        load_training_stack()
        quiet_console()  # as src.train's run, once Lightning is imported
        build_member(member, cfg)
        OmegaConf.resolve(cfg)  # its folder is Hydra's now; later members' folders are others
    except Exception as err:
        failed(err, cfg, member.run_dir, member.overrides, in_sweep=True)
        member.module = None
    return math.nan


def build_member(member: Member, cfg: DictConfig) -> None:
    """The member's parts, built as src.train builds a run's, from its seed on."""
    import torch

    from src.build import build_run

    datamodule, module, trainer = build_run(cfg)
    member.cfg, member.datamodule, member.module = cfg, datamodule, module
    member.random_state = torch.get_rng_state(), None  # a GPU's from its first step on
    member.callbacks = list(trainer.callbacks)
    member.loggers = list(trainer.loggers)
    member.clipping = trainer.gradient_clip_val, trainer.gradient_clip_algorithm


@contextlib.contextmanager
def member_logs(members: list[Member]):
    """While the population trains, each member's lines go to its own train.log, and the lines no
    member wrote (Lightning's, the population's) to every member's."""
    root = logging.getLogger()
    files = [h for h in root.handlers if isinstance(h, logging.FileHandler)]
    formatter = files[0].formatter if files else None
    for handler in files:
        root.removeHandler(handler)
        handler.close()
    handlers = []
    for member in members:
        handler = logging.FileHandler(member.run_dir / "train.log", mode="a")
        handler.setFormatter(formatter)
        handler.addFilter(lambda record, i=member.index: MEMBER.get() in (None, i))
        root.addHandler(handler)
        handlers.append(handler)
    try:
        yield
    finally:
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()


def fit_and_test(members: list[Member]) -> None:
    """One fit of the population, one test of the members that completed, each member's record."""
    from hydra.utils import instantiate

    from src.population_module import PopulationData, PopulationModule, member_trainer_parts
    from src.run_record import Outcome, fit_metrics
    from src.train import fit, test

    first = members[0]
    population = PopulationModule(members)
    callbacks, loggers = member_trainer_parts(members)
    # Each member's summary comes from its own ModelSummary; the population's would be no one's.
    trainer = instantiate(first.cfg.trainer, callbacks=callbacks, logger=loggers,
                          default_root_dir=str(first.run_dir.parent),
                          enable_model_summary=False)  # fmt: skip
    population.attach(trainer)
    data = PopulationData(members)
    outcome = fit(trainer, population, data, None)
    fit_seconds = time.perf_counter() - population.fit_started
    active = [m for m in members if m.active]
    metrics = {m.index: fit_metrics(m.view, m.module) for m in active}
    if outcome.status == "completed" and active:
        # Each member's weights from its last checkpoint, as its run alone tests that file.
        population.load_last_checkpoints()
        outcome = test(trainer, population, data, None)
    for m in active:
        last = m.run_dir / LAST_CKPT
        tested = last if outcome.status == "completed" and last.is_file() else None
        member_outcome = Outcome(outcome.status, outcome.error, tested)
        write_member_record(m, members, metrics[m.index], member_outcome, fit_seconds)


def write_member_record(member: Member, members: list[Member], metrics: dict, outcome,
                        fit_seconds: float) -> None:  # fmt: skip
    """The member's metrics.json, as src.train writes a run's, saying which jobs it trained with
    (its fit_seconds are that fit's)."""
    from src.run_record import run_record, write_record

    with member.running():
        record = run_record(member.cfg, member.run_dir, member.view, member.module, metrics,
                            outcome, fit_seconds)  # fmt: skip
        record["population"] = [m.run_dir.name for m in members]
        member.record = write_record(member.cfg, member.run_dir, member.overrides, member.view,
                                     record)  # fmt: skip
