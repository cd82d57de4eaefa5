"""Several optimizer steps per training_step call must be invisible: for every Trainer flag, hook
and schedule, a run with steps_per_call=5 ends exactly like the same run with Lightning's one step
per call: the same global_step, validations at the same steps, every logged value at the same x
position, bit-identical weights. Runs in this process on small MNIST-format files, with the real
modules, data, Trainer, callbacks and TensorBoard logger."""

import logging
from dataclasses import dataclass
from functools import partial

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.callbacks import EpochProgressBar
from src.data import MNISTDataModule
from src.models import DigitClassifier
from src.modules import DigitModule

pytestmark = pytest.mark.slow  # every test here trains

STEPS_PER_EPOCH = 16  # 500 training images in batches of 32; groups of 5 end mid-epoch


@dataclass
class Run:
    global_step: int
    validated_at: list[int]
    logged: dict[str, list[int]]  # TensorBoard tag → the steps its values were logged at
    weights: dict[str, torch.Tensor]
    estimated_steps: float
    progress: list[tuple[int, int, str]]  # per epoch: the bar's position, total, description
    grouped: bool
    hook_calls: dict[str, int]


class Recorder(L.Callback):
    """Epoch-level hooks only (they do not turn grouping off): what a run did, and how."""

    def __init__(self):
        self.validated_at, self.progress, self.grouped, self.estimated = [], [], None, None

    def on_train_start(self, trainer, pl_module):
        self.grouped = pl_module.grouped
        self.estimated = trainer.estimated_stepping_batches

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.validated_at.append(trainer.global_step)

    def on_train_epoch_end(self, trainer, pl_module):
        bar = trainer.progress_bar_callback
        if bar is not None:
            tqdm = bar.train_progress_bar
            self.progress.append((tqdm.n, tqdm.total, tqdm.desc))


class CountingModule(DigitModule):
    """A user's subclass that hooks every step and logs from its hooks."""

    calls: dict[str, int]

    def count(self, hook):
        self.calls[hook] = self.calls.get(hook, 0) + 1

    def on_train_batch_start(self, batch, batch_idx):
        self.count("on_train_batch_start")

    def on_before_backward(self, loss):
        self.count("on_before_backward")

    def on_after_backward(self):
        self.count("on_after_backward")
        self.log("grad_norm", torch.stack([p.grad.norm() for p in self.parameters()]).norm(),
                 on_step=True, on_epoch=False)  # fmt: skip

    def on_before_optimizer_step(self, optimizer):
        self.count("on_before_optimizer_step")

    def on_train_batch_end(self, outputs, batch, batch_idx):
        super().on_train_batch_end(outputs, batch, batch_idx)
        self.count("on_train_batch_end")


class CountingCallback(L.Callback):
    def __init__(self):
        self.calls = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.calls["callback on_train_batch_end"] = self.calls.get("callback on_train_batch_end", 0)
        self.calls["callback on_train_batch_end"] += 1
        pl_module.log("callback/step", float(trainer.global_step), on_step=True, on_epoch=False)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        key = "callback on_before_optimizer_step"
        self.calls[key] = self.calls.get(key, 0) + 1


SCHEDULES = {
    "constant": {"interval": "epoch", "schedule": partial(torch.optim.lr_scheduler.ConstantLR,
                                                          factor=1.0, total_iters=0)},  # fmt: skip
    "cosine": {"interval": "step", "schedule": partial(torch.optim.lr_scheduler.CosineAnnealingLR,
                                                       T_max=40)},  # fmt: skip
    "step": {"interval": "epoch", "schedule": partial(torch.optim.lr_scheduler.StepLR,
                                                      step_size=1, gamma=0.5)},  # fmt: skip
    "plateau": {"interval": "epoch", "monitor": "val/loss",
                "schedule": partial(torch.optim.lr_scheduler.ReduceLROnPlateau, patience=0)},
}  # fmt: skip


def fit(data_dir, tmp_path, steps_per_call, flags=None, schedule="constant", module=DigitModule,
        extra_callbacks=(), checkpoint=True) -> Run:  # fmt: skip
    flags = {"max_epochs": 2, "log_every_n_steps": 2, **(flags or {})}
    out = tmp_path / f"per_call_{steps_per_call}"
    L.seed_everything(0)
    data = MNISTDataModule(
        data_dir=str(data_dir), dataset="mnist", batch_size=32, eval_batch_size=25, val_size=100,
        train_size=None, split_seed=0, normalize=False, download=False, seed=0,
    )  # fmt: skip
    scheduler = None if schedule is None else {"name": "train/lr", **SCHEDULES[schedule]}
    model = module(
        net=DigitClassifier(hidden_dim=16, activation="relu"),
        optimizer=partial(torch.optim.SGD, lr=0.1, momentum=0.5),
        scheduler=scheduler,
        steps_per_call=steps_per_call,
    )
    model.calls = {}
    recorder = Recorder()
    counting = [cb for cb in extra_callbacks if isinstance(cb, CountingCallback)]
    callbacks = [LearningRateMonitor(logging_interval=None), recorder, *extra_callbacks]
    if flags.get("enable_progress_bar", True):
        callbacks.append(EpochProgressBar(refresh_rate=1))
    if checkpoint:
        callbacks.append(ModelCheckpoint(dirpath=out / "checkpoints", monitor="val/acc",
                                         mode="max", save_last=True))  # fmt: skip
    trainer = L.Trainer(
        default_root_dir=out, logger=TensorBoardLogger(out, name="", version=""),
        callbacks=callbacks, accelerator="cpu", devices=1, enable_model_summary=False,
        **({"enable_checkpointing": checkpoint} | flags),
    )  # fmt: skip
    trainer.fit(model, datamodule=data)
    events = EventAccumulator(str(out), size_guidance={"scalars": 0})
    events.Reload()
    logged = {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    hook_calls = dict(model.calls)
    for cb in counting:
        hook_calls |= cb.calls
    return Run(
        global_step=trainer.global_step,
        validated_at=recorder.validated_at,
        logged=logged,
        weights={k: v.clone() for k, v in model.net.state_dict().items()},
        estimated_steps=recorder.estimated,
        progress=recorder.progress,
        grouped=recorder.grouped,
        hook_calls=hook_calls,
    )


def assert_same(grouped: Run, single: Run) -> None:
    assert grouped.global_step == single.global_step
    assert grouped.validated_at == single.validated_at
    assert grouped.logged == single.logged
    assert grouped.progress == single.progress
    assert grouped.estimated_steps == single.estimated_steps
    assert grouped.hook_calls == single.hook_calls
    for name, value in single.weights.items():
        assert torch.equal(grouped.weights[name], value), name


# Each case: Trainer flags (or a schedule), and whether the steps can be grouped under them.
CASES = {
    "defaults": ({}, True),
    "limit_train_batches=7": ({"limit_train_batches": 7}, False),
    "limit_train_batches=0.5": ({"limit_train_batches": 0.5}, False),
    "limit_val_batches=2": ({"limit_val_batches": 2}, True),
    "limit_val_batches=0.5": ({"limit_val_batches": 0.5}, True),
    "val_check_interval=5": ({"val_check_interval": 5}, False),
    "val_check_interval=0.5": ({"val_check_interval": 0.5}, False),
    "check_val_every_n_epoch=2": ({"check_val_every_n_epoch": 2, "max_epochs": 4}, True),
    "max_steps=23": ({"max_steps": 23, "max_epochs": -1}, True),
    "max_steps=32": ({"max_steps": 32, "max_epochs": -1}, True),
    "max_epochs=3": ({"max_epochs": 3}, True),
    "min_epochs=3": ({"min_epochs": 3, "max_epochs": 3}, True),
    "max_time": ({"max_time": "00:00:05:00"}, False),
    "num_sanity_val_steps=0": ({"num_sanity_val_steps": 0}, True),
    "num_sanity_val_steps=-1": ({"num_sanity_val_steps": -1}, True),
    "overfit_batches=3": ({"overfit_batches": 3}, False),
    "fast_dev_run": ({"fast_dev_run": True}, False),
    "fast_dev_run=3": ({"fast_dev_run": 3}, False),
    "log_every_n_steps=3": ({"log_every_n_steps": 3}, True),
    "log_every_n_steps=50": ({"log_every_n_steps": 50}, True),
    "enable_progress_bar=false": ({"enable_progress_bar": False}, True),
    "detect_anomaly": ({"detect_anomaly": True}, True),
    "precision=bf16-mixed": ({"precision": "bf16-mixed"}, False),
    "profiler=simple": ({"profiler": "simple"}, False),
    "gradient_clip_val, norm": ({"gradient_clip_val": 0.05}, False),
    "gradient_clip_val, value": (
        {"gradient_clip_val": 0.01, "gradient_clip_algorithm": "value"},
        False,
    ),
    "accumulate_grad_batches=3": ({"accumulate_grad_batches": 3}, False),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_trainer_flags_mean_what_lightning_says(case, tiny_mnist, tmp_path):
    flags, groupable = CASES[case]
    grouped, single = (fit(tiny_mnist, tmp_path, n, flags) for n in (5, 1))
    assert grouped.grouped is groupable and single.grouped is False
    assert_same(grouped, single)
    if not flags.get("fast_dev_run") and flags.get("log_every_n_steps", 2) < 16:
        assert single.logged["train/loss_step"]  # (fast_dev_run swaps the loggers for a dummy)
    if "accumulate_grad_batches" not in flags and not flags.get("fast_dev_run"):
        assert single.estimated_steps == single.global_step  # the steps the run really took


def test_the_defaults_group_their_steps_and_count_every_one(tiny_mnist, tmp_path):
    run = fit(tiny_mnist, tmp_path, 5)
    assert run.grouped and run.global_step == 2 * STEPS_PER_EPOCH == run.estimated_steps
    assert run.validated_at == [16, 32]
    # Lightning's x-axis: a value sits at the number of optimizer steps taken before it.
    assert run.logged["train/loss_step"] == list(range(1, 32, 2))
    assert run.logged["train/loss"] == run.logged["val/acc"] == [15, 31]
    assert run.logged["train/lr"] == [0, 16]
    assert run.progress == [(16, 16, "Epoch 1/2: "), (16, 16, "Epoch 2/2: ")]


def test_accumulated_gradients_count_optimizer_steps(tiny_mnist, tmp_path):
    run = fit(tiny_mnist, tmp_path, 5, {"accumulate_grad_batches": 3})
    assert run.global_step == 2 * 6  # ceil(16 / 3) optimizer steps per epoch
    assert run.estimated_steps == 12


@pytest.mark.parametrize(("schedule", "groupable"), [
    ("cosine", False), ("step", True), ("plateau", True), (None, False),
])  # fmt: skip
def test_schedules_step_as_lightning_steps_them(schedule, groupable, tiny_mnist, tmp_path):
    grouped, single = (fit(tiny_mnist, tmp_path, n, schedule=schedule) for n in (5, 1))
    assert grouped.grouped is groupable
    assert_same(grouped, single)


def test_a_modules_step_hooks_and_logs_run_once_per_step(tiny_mnist, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="src.modules.supervised"):
        grouped, single = (fit(tiny_mnist, tmp_path, n, module=CountingModule) for n in (5, 1))
    assert not grouped.grouped
    assert "one optimizer step per training_step call, as CountingModule.on_train_batch_start" \
        in caplog.text  # fmt: skip
    assert_same(grouped, single)
    steps = 2 * STEPS_PER_EPOCH
    assert grouped.hook_calls == dict.fromkeys(
        ["on_train_batch_start", "on_before_backward", "on_after_backward",
         "on_before_optimizer_step", "on_train_batch_end"], steps,
    )  # fmt: skip
    assert grouped.logged["grad_norm"] == list(range(1, steps, 2))


def test_a_callbacks_step_hooks_run_once_per_step(tiny_mnist, tmp_path):
    grouped, single = (
        fit(tiny_mnist, tmp_path, n, extra_callbacks=[CountingCallback()]) for n in (5, 1)
    )
    assert not grouped.grouped
    assert_same(grouped, single)
    steps = 2 * STEPS_PER_EPOCH
    assert grouped.hook_calls == {
        "callback on_train_batch_end": steps, "callback on_before_optimizer_step": steps,
    }  # fmt: skip
    assert grouped.logged["callback/step"] == list(range(1, steps, 2))


def test_early_stopping_stops_at_the_same_epoch(tiny_mnist, tmp_path):
    def early_stopping():
        return EarlyStopping(monitor="val/acc", mode="max", patience=0, min_delta=1.0)

    grouped, single = (
        fit(tiny_mnist, tmp_path, n, {"max_epochs": 5}, extra_callbacks=[early_stopping()])
        for n in (5, 1)
    )
    assert grouped.grouped
    assert_same(grouped, single)
    # The first epoch sets the best val/acc; the second does not beat it by 1.0, and stops.
    assert grouped.global_step == 2 * STEPS_PER_EPOCH and grouped.estimated_steps == 5 * 16


def test_without_checkpointing(tiny_mnist, tmp_path):
    flags = {"enable_checkpointing": False}
    grouped, single = (fit(tiny_mnist, tmp_path, n, flags, checkpoint=False) for n in (5, 1))
    assert grouped.grouped
    assert_same(grouped, single)
