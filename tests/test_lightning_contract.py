"""Lightning's contract holds because nothing is changed: one minibatch and one optimizer step per
training_step call, so every Trainer flag, hook, callback and self.log call means what Lightning
documents. In this process on small MNIST-format files (the real modules, data, Trainer and
TensorBoard logger), then as a user runs it, through `python -m src.train`."""

import json
from dataclasses import dataclass
from functools import partial

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.callbacks import EpochProgressBar
from src.data import MNISTDataModule
from src.models import DigitClassifier
from src.modules import DigitModule
from tests.conftest import read_metrics, run_train

pytestmark = pytest.mark.slow  # every test here trains

STEPS_PER_EPOCH = 16  # 500 training images in batches of 32


def scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard's own reader finds under `log_dir`: tag → [(step, value)]."""
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}  # fmt: skip


@dataclass
class Run:
    global_step: int
    estimated_steps: float
    validated_at: list[int]
    logged: dict[str, list[tuple[int, float]]]
    step_losses: list[list[tuple[float, int]]]  # per epoch: each step's (loss, batch size)


class Reference(L.Callback):
    """What Lightning itself does in the run: where it validates, and a value logged at every
    step with `on_step=True` (Lightning sends it to the loggers on the steps of its own rule)."""

    def __init__(self):
        self.validated_at, self.step_losses, self.estimated = [], [], None

    def on_train_start(self, trainer, pl_module):
        self.estimated = trainer.estimated_stepping_batches

    def on_train_epoch_start(self, trainer, pl_module):
        self.step_losses.append([])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.step_losses[-1].append((outputs["loss"].item(), len(batch[1])))
        pl_module.log("reference/loss_step", outputs["loss"], on_step=True, on_epoch=False)

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.validated_at.append(trainer.global_step)


# As conf/scheduler/none.yaml: a constant rate, which LearningRateMonitor logs as train/lr.
CONSTANT = {
    "name": "train/lr",
    "interval": "epoch",
    "schedule": partial(torch.optim.lr_scheduler.ConstantLR, factor=1.0, total_iters=0),
}


def fit(data_dir, tmp_path, flags=None) -> Run:
    flags = {"max_epochs": 2, "log_every_n_steps": 2, **(flags or {})}
    L.seed_everything(0)
    data = MNISTDataModule(
        data_dir=str(data_dir), dataset="mnist", batch_size=32, eval_batch_size=25, val_size=100,
        train_size=None, split_seed=0, normalize=False, download=False, seed=0,
    )  # fmt: skip
    model = DigitModule(
        net=DigitClassifier(hidden_dim=16, activation="relu"),
        optimizer=partial(torch.optim.SGD, lr=0.1, momentum=0.5),
        scheduler=CONSTANT,
    )
    reference = Reference()
    callbacks = [LearningRateMonitor(), reference, EpochProgressBar(refresh_rate=1),
                 ModelCheckpoint(dirpath=tmp_path / "checkpoints", monitor="val/acc", mode="max",
                                 save_last=True)]  # fmt: skip
    trainer = L.Trainer(
        default_root_dir=tmp_path, logger=TensorBoardLogger(tmp_path, name="", version=""),
        callbacks=callbacks, accelerator="cpu", devices=1, enable_model_summary=False, **flags,
    )  # fmt: skip
    trainer.fit(model, datamodule=data)
    return Run(trainer.global_step, reference.estimated, reference.validated_at,
               scalars(tmp_path), reference.step_losses)  # fmt: skip


# Trainer flags, each of which the run honours as Lightning documents it.
CASES = {
    "defaults": {},
    "limit_train_batches=7": {"limit_train_batches": 7},
    "limit_train_batches=0.5": {"limit_train_batches": 0.5},
    "limit_val_batches=0.5": {"limit_val_batches": 0.5},
    "val_check_interval=5": {"val_check_interval": 5},
    "check_val_every_n_epoch=2": {"check_val_every_n_epoch": 2, "max_epochs": 4},
    "max_steps=23": {"max_steps": 23, "max_epochs": -1},
    "min_epochs=3": {"min_epochs": 3, "max_epochs": 3},
    "max_time": {"max_time": "00:00:05:00"},
    "overfit_batches=3": {"overfit_batches": 3},
    "fast_dev_run=3": {"fast_dev_run": 3},
    "log_every_n_steps=3": {"log_every_n_steps": 3},
    "log_every_n_steps=50": {"log_every_n_steps": 50},
    "detect_anomaly": {"detect_anomaly": True},
    "precision=bf16-mixed": {"precision": "bf16-mixed"},
    "profiler=simple": {"profiler": "simple"},
    "gradient_clip_val": {"gradient_clip_val": 0.05},
    "accumulate_grad_batches=3": {"accumulate_grad_batches": 3},
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_the_project_logs_where_lightning_logs(case, tiny_mnist, tmp_path):
    """train/loss_step lands exactly where Lightning puts a value logged with on_step=True, and
    the epoch's train/loss and train/acc where it puts epoch values."""
    flags = CASES[case]
    run = fit(tiny_mnist, tmp_path, flags)
    if flags.get("fast_dev_run"):  # Lightning swaps the loggers for a dummy
        assert run.global_step == 3 and not run.logged
        return
    steps = [step for step, _ in run.logged.get("reference/loss_step", [])]
    assert [step for step, _ in run.logged.get("train/loss_step", [])] == steps
    if "accumulate_grad_batches" not in flags:  # (Lightning's outputs hold the loss divided)
        assert run.logged.get("train/loss_step") == run.logged.get("reference/loss_step")
    epochs = [step for step, _ in run.logged["epoch"]]
    assert [step for step, _ in run.logged["train/loss"]] == [
        step for step, _ in run.logged["train/acc"]
    ]
    assert set(step for step, _ in run.logged["train/loss"]) <= set(epochs)
    if "accumulate_grad_batches" not in flags:
        assert run.estimated_steps >= run.global_step  # max_time and limits stop it earlier


def test_the_epochs_loss_is_the_mean_over_its_samples(tiny_mnist, tmp_path):
    run = fit(tiny_mnist, tmp_path)
    assert run.global_step == 2 * STEPS_PER_EPOCH == run.estimated_steps
    assert run.validated_at == [16, 32]
    # Lightning's x-axis: a value sits at the number of optimizer steps taken before it.
    assert [step for step, _ in run.logged["train/loss_step"]] == list(range(1, 32, 2))
    assert [step for step, _ in run.logged["train/loss"]] == [15, 31]
    assert [step for step, _ in run.logged["train/lr"]] == [0, 16]
    for (_, logged), epoch in zip(run.logged["train/loss"], run.step_losses, strict=True):
        mean = sum(loss * n for loss, n in epoch) / sum(n for _, n in epoch)
        assert logged == pytest.approx(mean, rel=1e-6)


@pytest.fixture(scope="module")
def user_run(tiny_mnist, tmp_path_factory):
    """`python -m src.train` with the most ordinary Lightning additions of a user, all at once."""
    run_dir = tmp_path_factory.mktemp("user_run")
    extras = {
        "epoch_end": {"_target_": "tests.user_code.EpochEndLogger"},
        "steps": {"_target_": "tests.user_code.StepRecorder", "path": str(run_dir / "seen.json")},
        "lr_per_step": {"_target_": "lightning.pytorch.callbacks.LearningRateMonitor",
                        "logging_interval": "step"},
        "every_10": {"_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
                     "dirpath": str(run_dir / "every_10"), "every_n_train_steps": 10,
                     "save_top_k": -1, "filename": "'step{step}'"},
        "early": {"_target_": "lightning.pytorch.callbacks.EarlyStopping", "monitor": "val/loss",
                  "patience": 5},
    }  # fmt: skip
    overrides = [f"+callbacks.{name}.{key}={value}" for name, node in extras.items()
                 for key, value in node.items()]  # fmt: skip
    run_train("+experiment=mnist_sgd", f"data.data_dir={tiny_mnist}", "data.val_size=100",
              "data.batch_size=32", "trainer.max_epochs=3", "trainer.log_every_n_steps=4",
              "model._target_=tests.user_code.StepLoggingDigitModule", *overrides,
              f"hydra.run.dir={run_dir}")  # fmt: skip
    return run_dir


def test_a_users_callbacks_and_subclass_run_to_the_end(user_run):
    record = read_metrics(user_run)
    assert record["status"] == "completed" and record["steps"] == 3 * STEPS_PER_EPOCH
    assert record["test/acc"] is not None
    logged = scalars(user_run)
    # self.log in on_train_epoch_end and on_validation_epoch_end: once per epoch.
    epoch_ends = [step for step, _ in logged["train/loss"]]
    assert epoch_ends == [15, 31, 47]
    assert [step for step, _ in logged["user/weight_norm"]] == epoch_ends
    assert [value for _, value in logged["user/val_epoch"]] == [0, 1, 2]
    # on_step=True in a subclass's training_step: one point per log_every_n_steps.
    assert [step for step, _ in logged["user/loss"]] == list(range(3, 48, 4))
    assert logged["user/loss"] == logged["train/loss_step"]
    # LearningRateMonitor(logging_interval="step"): at every logging step (beside the run's own,
    # which logs the constant rate as each epoch starts).
    assert [step for step, _ in logged["train/lr"]] == sorted([0, 16, 32, *range(3, 48, 4)])
    # trainer.global_step in on_train_batch_end: 1, 2, 3, ...
    assert json.loads((user_run / "seen.json").read_text()) == list(range(1, 49))
    # ModelCheckpoint(every_n_train_steps=10): at steps 10, 20, 30, 40.
    saved = sorted(p.name for p in (user_run / "every_10").glob("*.ckpt"))
    assert saved == [f"stepstep={n}.ckpt" for n in (10, 20, 30, 40)]


def test_callbacks_that_change_the_training_run_to_the_end(tiny_mnist, tmp_path):
    """GradientAccumulationScheduler and StochasticWeightAveraging, from the second epoch."""
    callbacks = "lightning.pytorch.callbacks"
    run_train("+experiment=mnist_sgd", f"data.data_dir={tiny_mnist}", "data.val_size=100",
              "data.batch_size=32", "trainer.max_epochs=3",
              f"+callbacks.accumulate._target_={callbacks}.GradientAccumulationScheduler",
              "+callbacks.accumulate.scheduling={1:4}",
              f"+callbacks.swa._target_={callbacks}.StochasticWeightAveraging",
              "+callbacks.swa.swa_lrs=0.01", "+callbacks.swa.swa_epoch_start=2",
              f"hydra.run.dir={tmp_path}")  # fmt: skip
    record = read_metrics(tmp_path)
    assert record["status"] == "completed" and record["test/acc"] is not None
    assert record["steps"] == STEPS_PER_EPOCH + 2 * STEPS_PER_EPOCH // 4  # 4 batches a step
