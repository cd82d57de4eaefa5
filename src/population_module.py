"""The LightningModule that holds a population's members, and what each member sees of the one
Trainer that fits them: a view of it (`MemberTrainer`), its callbacks called with that view
(`ForMembers`), its loggers fed its own metrics (`MemberLogger`). See src/population.py."""

import dataclasses
import functools
import json
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint, ProgressBar
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import CombinedLoader
from omegaconf import OmegaConf
from torch import nn

from src.modules import Diverged
from src.names import LAST_CKPT
from src.population import MEMBER, SEPARATOR, Member

LOOPS = ("fit_loop", "validate_loop", "test_loop", "predict_loop")


class PopulationModule(L.LightningModule):
    """Members trained in lockstep: each step runs every member's own training_step on the batch,
    and the population's loss is the sum of theirs. A member that diverges is recorded and stops;
    the others go on."""

    def __init__(self, members: list[Member]):
        super().__init__()
        self.nets = nn.ModuleList([m.module for m in members])  # their parameters, for Lightning
        self.population = members
        self.fit_started = time.perf_counter()
        for m in members:
            m.module.log_as = functools.partial(self.log_member, m)

    def on_fit_start(self) -> None:
        self.fit_started = time.perf_counter()

    def attach(self, trainer: L.Trainer) -> None:
        """Give each member its view of `trainer`, as the trainer it would have alone."""
        for m in self.population:
            m.view = MemberTrainer(trainer, m)
            m.module.trainer = m.view

    def log_member(self, member: Member, name: str, value, *args, **kwargs) -> None:
        self.log(f"{member.index}{SEPARATOR}{name}", value, *args, **kwargs)

    def each(self, hook: str, *args, mine=None) -> list[tuple[Member, Any]]:
        return call_each(
            self.population, lambda m: getattr(m.module, hook)(*(mine(m) if mine else args))
        )

    # --- Lightning's hooks, passed to each member -------------------------------------------

    def setup(self, stage: str) -> None:
        self.each("setup", stage)

    def on_train_start(self) -> None:
        self.each("on_train_start")

    def training_step(self, batches: list, batch_idx: int):
        """Every active member's own step on its own batch (`PopulationData`)."""
        losses = []
        for m, loss in self.each("training_step", mine=lambda m: (batches[m.loader], batch_idx)):
            # What Lightning hands the member's on_train_batch_end as `outputs`, alone: its loss
            # over the number of batches accumulated (ClosureResult's).
            accumulated = self.trainer.accumulate_grad_batches
            m.outputs = {"loss": loss.detach() / accumulated} if loss is not None else {}
            if loss is not None:
                losses.append(loss)
        if not any(m.active for m in self.population):
            self.trainer.should_stop = True
        return torch.stack(losses).sum() if losses else None

    def on_train_epoch_end(self) -> None:
        self.each("on_train_epoch_end")
        if not any(m.active for m in self.population):
            self.trainer.should_stop = True

    def validation_step(self, batch, batch_idx: int) -> None:
        self.each("validation_step", batch, batch_idx)

    def test_step(self, batch, batch_idx: int) -> None:
        self.each("test_step", batch, batch_idx)

    def configure_optimizers(self):
        """Each member's own optimizer and schedule, built as its run alone builds them, stepped
        together (`MemberSteps`, `MemberSchedules`) at the interval their configs share."""
        for m in self.population:
            m.optimizer = m.module.optimizer_factory(m.module.parameters())
        optimizer = MemberSteps(self.population)
        if self.population[0].module.scheduler is None:
            return optimizer
        configs = [m.module.lr_scheduler(m.optimizer) for m in self.population]
        for m, config in zip(self.population, configs, strict=True):
            m.schedule = config["scheduler"]
        schedules = MemberSchedules(optimizer, self.population)
        return {"optimizer": optimizer, "lr_scheduler": {**configs[0], "scheduler": schedules}}

    def lr_scheduler_step(self, scheduler, metric) -> None:
        scheduler.step()  # MemberSchedules: each member's own (a metric's schedule trains alone)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None,
                                    gradient_clip_algorithm=None) -> None:  # fmt: skip
        """Each member's gradients clipped by its own module's hook with its own run's values
        (which may differ from member to member), over its own optimizer's parameters, as its run
        alone clips them (not by the norm of the whole population's)."""
        clipping = [m for m in self.population if m.clipping[0]]  # None or 0: no clipping
        call_each(
            clipping, lambda m: m.module.configure_gradient_clipping(m.optimizer, *m.clipping)
        )

    def load_last_checkpoints(self) -> None:
        """Each active member's weights from its last checkpoint (the same weights when the fit
        ended at an epoch's end)."""
        for m in self.population:
            last = m.run_dir / LAST_CKPT
            if m.active and last.is_file():
                state = self.trainer.strategy.checkpoint_io.load_checkpoint(last)
                m.module.load_state_dict(state["state_dict"])


class MemberSteps(torch.optim.Optimizer):
    """The optimizer Lightning steps: its parameter groups are the members' own optimizers'
    (the same dicts), and its step is the step of each active member's own optimizer after the
    population's loss has been differentiated (the gradient of a sum of the members' losses is
    each member's own). Each member's update, and its optimizer's state, are its run alone's."""

    def __init__(self, members: list[Member]):
        self.members = members
        super().__init__([g for m in members for g in m.optimizer.param_groups], {})

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        call_each(self.members, lambda m: m.optimizer.step())  # not one that stopped in this step
        return loss


class MemberSchedules:
    """The schedule Lightning steps: each active member's own schedule over its own optimizer.
    (Its state_dict and load_state_dict are Lightning's schedule API; a member's checkpoint holds
    its own schedule's.)"""

    def __init__(self, optimizer: MemberSteps, members: list[Member]):
        self.optimizer = optimizer  # Lightning's check: a schedule of the optimizer it steps
        self.members = members

    def step(self) -> None:
        call_each(self.members, lambda m: m.schedule.step())

    def state_dict(self) -> list[dict]:
        return [m.schedule.state_dict() for m in self.members]

    def load_state_dict(self, states: list[dict]) -> None:
        for m, state in zip(self.members, states, strict=True):
            m.schedule.load_state_dict(state)


def call_each(members: list[Member], call: Callable[[Member], Any]) -> list[tuple[Member, Any]]:
    """Run `call(member)`, code of the member's own (its module's, callbacks', optimizer's or
    schedule's), for every active member, in the member's own context; a member whose code raises
    (it diverged, say) stops. Each member that returned, with what it returned."""
    results = []
    for m in [m for m in members if m.active]:  # a member's run alone ended where it raised
        with m.running():
            try:
                results.append((m, call(m)))
            except Exception as err:
                stop(m, err)
    return results


def stop(member: Member, err: Exception) -> None:
    """A member's code raised: what its run alone does when fit raises (its callbacks and loggers
    told), and its record, written now: `diverged`, or `failed` with the error. It takes no
    further step; the others go on."""
    from src.population import write_member_record
    from src.run_record import Outcome, failed, fit_metrics

    population = member.view.population_trainer.lightning_module
    for callback in member.callbacks:
        callback.on_exception(member.view, member.module, err)
    for logger in member.loggers:
        logger.finalize("failed")
    member.active = False
    if not isinstance(err, Diverged):
        member.record = failed(err, member.cfg, member.run_dir, member.overrides, in_sweep=True)
        return
    metrics = fit_metrics(member.view, member.module)
    seconds = time.perf_counter() - population.fit_started
    write_member_record(member, population.population, metrics, Outcome("diverged", str(err)),
                        seconds)  # fmt: skip


# --- what a member sees of the trainer ----------------------------------------------------------


def own(member: Member, metrics: dict) -> dict:
    """A member's share of the population's logged values, under the names it logged them."""
    prefix = f"{member.index}{SEPARATOR}"
    return {k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix)}


class MemberTrainer:
    """The population's Trainer as a member's callbacks, loggers and module see it: the member's
    module, metrics, loggers, callbacks, optimizer, schedule, gradient clipping and checkpoints;
    everything else (the step, the epoch, the loops, the strategy, the other flags) the
    population's, which are the member's too."""

    def __init__(self, trainer: L.Trainer, member: Member):
        self.population_trainer = trainer
        self.member = member

    def __getattr__(self, name: str) -> Any:
        return getattr(self.population_trainer, name)

    def __setattr__(self, name: str, value) -> None:
        if name in ("population_trainer", "member"):
            object.__setattr__(self, name, value)
        else:  # a flag a callback sets (should_stop, ...) is the population's
            setattr(self.population_trainer, name, value)

    lightning_module = property(lambda self: self.member.module)
    gradient_clip_val = property(lambda self: self.member.clipping[0])
    gradient_clip_algorithm = property(lambda self: self.member.clipping[1])
    model = lightning_module
    callbacks = property(lambda self: self.member.callbacks)
    loggers = property(lambda self: self.member.loggers)
    logger = property(lambda self: self.member.loggers[0] if self.member.loggers else None)
    callback_metrics = property(
        lambda self: own(self.member, self.population_trainer.callback_metrics)
    )
    logged_metrics = property(lambda self: own(self.member, self.population_trainer.logged_metrics))
    progress_bar_metrics = property(
        lambda self: own(self.member, self.population_trainer.progress_bar_metrics)
    )
    optimizers = property(lambda self: [self.member.optimizer])
    checkpoint_callbacks = property(
        lambda self: [c for c in self.member.callbacks if isinstance(c, Checkpoint)]
    )
    checkpoint_callback = property(lambda self: next(iter(self.checkpoint_callbacks), None))
    log_dir = property(
        lambda self: self.logger.log_dir if self.logger else str(self.member.run_dir)
    )
    default_root_dir = property(lambda self: str(self.member.run_dir))
    datamodule = property(lambda self: self.member.datamodule)

    @property
    def train_dataloader(self):
        loaders = self.population_trainer.train_dataloader  # PopulationData's, one per source
        return loaders[self.member.loader] if loaders is not None else None

    @property
    def lr_scheduler_configs(self) -> list:
        return [dataclasses.replace(c, scheduler=self.member.schedule)
                for c in self.population_trainer.lr_scheduler_configs]  # fmt: skip

    def save_checkpoint(self, filepath, weights_only: bool = False, storage_options=None) -> None:
        """Write the checkpoint the member's run alone would write at this moment."""
        checkpoint = member_checkpoint(self, weights_only)
        self.population_trainer.strategy.save_checkpoint(checkpoint, filepath, storage_options)


def member_checkpoint(view: MemberTrainer, weights_only: bool) -> dict:
    """The dict Lightning's Trainer.save_checkpoint writes, for the member alone: its weights,
    the loops' state (the population's steps are the member's), its callbacks' states, its own
    optimizer's and schedule's states and its module's additions."""
    trainer, member = view.population_trainer, view.member
    module = member.module
    checkpoint = {
        "epoch": trainer.current_epoch,
        "global_step": trainer.global_step,
        "pytorch-lightning_version": L.__version__,
        "state_dict": module.state_dict(),
        "loops": {name: getattr(trainer, name).state_dict() for name in LOOPS},
    }
    # Where its own training loader is in the epoch: its entry of the population's loaders'.
    fit_state = checkpoint["loops"]["fit_loop"].get("state_dict", {})
    if fit_state.get("combined_loader"):
        fit_state["combined_loader"] = [fit_state["combined_loader"][member.loader]]
    if not weights_only:
        states = {c.state_key: c.state_dict() for c in member.callbacks}
        checkpoint["callbacks"] = {key: state for key, state in states.items() if state}
        checkpoint["optimizer_states"] = [o.state_dict() for o in view.optimizers]
        checkpoint["lr_schedulers"] = [c.scheduler.state_dict() for c in view.lr_scheduler_configs]
        precision = trainer.precision_plugin.state_dict()
        if precision:
            checkpoint[type(trainer.precision_plugin).__qualname__] = precision
    if module.hparams:
        checkpoint[module.CHECKPOINT_HYPER_PARAMS_KEY] = dict(module.hparams)
    datamodule = member.datamodule
    data_state = datamodule.state_dict() if datamodule is not None else None
    if data_state:
        checkpoint[type(datamodule).__qualname__] = data_state
    if not weights_only:
        for callback in member.callbacks:
            callback.on_save_checkpoint(view, module, checkpoint)
    module.on_save_checkpoint(checkpoint)
    return checkpoint


# --- the data -----------------------------------------------------------------------------------


class PopulationData(L.LightningDataModule):
    """The members' data. Members whose data configs are equal share one datamodule and one
    training loader; members that differ in seed draw their own batches, each in its own order,
    in lockstep (one CombinedLoader of the members' loaders: a step's batch is a list of them).
    The validation and test sets are the first member's, which are every member's: a population
    holds only datamodules whose seed orders the training batches and chooses nothing else
    (src/population.py, SEED_ORDERS_ONLY)."""

    def __init__(self, members: list[Member]):
        super().__init__()
        by_config = {}
        for m in members:
            key = json.dumps(OmegaConf.to_container(m.cfg.data, resolve=True), sort_keys=True)
            m.datamodule = by_config.setdefault(key, m.datamodule)
            m.loader = list(by_config).index(key)
        self.sources = list(by_config.values())

    def prepare_data(self) -> None:
        for source in self.sources:
            source.prepare_data()

    def setup(self, stage: str) -> None:
        for source in self.sources:
            source.trainer = self.trainer
            source.setup(stage)

    def teardown(self, stage: str) -> None:
        for source in self.sources:
            source.teardown(stage)

    def train_dataloader(self) -> CombinedLoader:
        return CombinedLoader([source.train_dataloader() for source in self.sources], "min_size")

    def val_dataloader(self):
        return self.sources[0].val_dataloader()

    def test_dataloader(self):
        return self.sources[0].test_dataloader()


# --- callbacks and loggers ----------------------------------------------------------------------


class ForMembers(L.Callback):
    """The members' callbacks: each hook calls, member by member, the callbacks of that member
    that have it, with the member's view of the trainer and its own module, while the member is
    active, in its context. A member's callbacks keep their order (Lightning's, alone)."""

    state_key = "ForMembers"  # no state of its own: each member's is in that member's checkpoints

    def __init__(self, members: list[Member], callbacks: dict[int, list]):
        self.hooks = {}  # hook name -> {member: its callbacks' bound hooks of that name}
        for name in HOOKS:
            for member in members:
                bound = [getattr(c, name) for c in callbacks[member.index]
                         if getattr(type(c), name) is not getattr(L.Callback, name)]  # fmt: skip
                if bound:
                    self.hooks.setdefault(name, {})[member] = bound

    def __getattribute__(self, name: str):
        hooks = object.__getattribute__(self, "hooks") if name != "hooks" else None
        if hooks is not None and name in hooks:
            return functools.partial(call_for_members, hooks[name], OWN_ARGS.get(name))
        return object.__getattribute__(self, name)


class CheckpointsForMembers(ForMembers, Checkpoint):
    """The members' checkpoint callbacks: Lightning runs them after the module's epoch-end hook,
    as it runs a run's own alone."""

    state_key = "CheckpointsForMembers"


HOOKS = [
    name for name in dir(L.Callback) if name.startswith("on_") or name in ("setup", "teardown")
]
HOOKS.remove("on_save_checkpoint")  # a member's checkpoints are its view's (member_checkpoint)
HOOKS.remove("on_load_checkpoint")


# The hooks whose arguments are each member's own (its batch and outputs, its optimizer): hook
# name -> the member's arguments made from the population's.
OWN_ARGS = {
    "on_train_batch_start": lambda m, batch, batch_idx: (batch[m.loader], batch_idx),
    "on_train_batch_end": lambda m, outputs, batch, batch_idx: (m.outputs, batch[m.loader],
                                                                 batch_idx),
    "on_before_optimizer_step": lambda m, optimizer: (m.optimizer,),
    "on_before_zero_grad": lambda m, optimizer: (m.optimizer,),
}  # fmt: skip


def call_for_members(hooks: dict, own_args, trainer, pl_module=None, *args, **kwargs) -> None:
    def call(member: Member) -> None:
        mine = own_args(member, *args) if own_args else args
        for hook in hooks[member]:
            hook(member.view, member.module, *mine, **kwargs)

    call_each(list(hooks), call)


class MemberLogger(Logger):
    """A member's logger, given the member's share of what Lightning logs, under its own names."""

    def __init__(self, logger: Logger, member: Member):
        super().__init__()
        self.inner, self.member = logger, member

    name = property(lambda self: self.inner.name)
    version = property(lambda self: self.inner.version)
    save_dir = property(lambda self: self.inner.save_dir)
    log_dir = property(lambda self: getattr(self.inner, "log_dir", None))
    experiment = property(lambda self: self.inner.experiment)

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        if not self.member.active:
            return
        mine = own(self.member, metrics)
        shared = {k: v for k, v in metrics.items() if SEPARATOR not in k}
        whose = MEMBER.get()
        if mine or (shared and whose in (None, self.member.index)):
            self.inner.log_metrics({**shared, **mine} if mine else shared, step)

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        self.inner.log_hyperparams(params, *args, **kwargs)

    def log_graph(self, model, input_array=None) -> None:
        return None  # the population's graph is no member's

    def save(self) -> None:
        self.inner.save()

    def finalize(self, status: str) -> None:
        if self.member.active:
            self.inner.finalize(status)

    def after_save_checkpoint(self, checkpoint_callback) -> None:
        return None  # a member's checkpoints are saved through its own callbacks' view


def member_trainer_parts(members: list[Member]) -> tuple[list, list]:
    """The population trainer's callbacks and loggers: every member's, each for its member; one
    progress bar (the first member's) for the console."""
    bar = next((c for c in members[0].callbacks if isinstance(c, ProgressBar)), None)
    plain = {m.index: [c for c in m.callbacks if not isinstance(c, (ProgressBar, Checkpoint))]
             for m in members}  # fmt: skip
    saving = {m.index: [c for c in m.callbacks if isinstance(c, Checkpoint)] for m in members}
    callbacks = [ForMembers(members, plain), CheckpointsForMembers(members, saving)]
    loggers = [MemberLogger(logger, m) for m in members for logger in m.loggers]
    return ([bar] if bar else []) + callbacks, loggers
