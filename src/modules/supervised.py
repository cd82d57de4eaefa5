"""What every task shares: a network fitted to a loss, with an accuracy, an optimizer and a
learning-rate schedule."""

import functools
import logging
import math
from collections.abc import Callable, Iterable

import lightning as L
import torch
from lightning.pytorch.utilities.types import LRSchedulerConfig
from torch import nn
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import MulticlassCalibrationError

from src.errors import InputError
from src.schedules import run_length

log = logging.getLogger(__name__)

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
Batch = tuple[torch.Tensor, torch.Tensor]
# An untrained classifier guesses about uniformly, so its first loss is near ln C, a uniform
# guess's cross-entropy over C classes. With the default init every shipped network (the
# DigitClassifier with each activation, the MLP, the CNN) starts within 0.12 of ln 10 on a first
# batch of 64 real MNIST images, with or without data.normalize (10 seeds each). Cross-entropy
# grows by about half the variance of the logits, so 0.5 more takes logits spread by about 1: a net
# sure of itself before it has seen a label. Pixels left in 0-255 give 20 and more. (A softmax
# before the cross-entropy goes unseen here: its first loss is ln C as well.)
FIRST_LOSS_TOLERANCE = 0.5
# A run has diverged when its loss stops being finite, or when an epoch's training loss is more
# than DIVERGED_ABOVE times its first loss: far worse than the untrained network. The second
# catches an explosion while its numbers are still finite (SGD at lr 1e6 on MNIST: 2e10 after 2
# steps, 1e31 after 4, NaN at 7). Healthy runs stay well below it: SGD at lr 10, 30 times the
# best rate, ends its first epoch at 1.2 times its first loss. A loss that the network's output
# bounds (MSE after a sigmoid, as in the gate nets: at most 1) saturates rather than explodes.
DIVERGED_ABOVE = 2.0
NO_STEP = torch.iinfo(torch.long).max  # "no step yet"


class Diverged(RuntimeError):
    """The training loss stopped being a finite number, or grew far past its first value."""


class NetworkMismatch(InputError, ValueError):
    """The network cannot take the task's input, or its output does not fit the task's loss."""


class SupervisedModule(L.LightningModule):
    """A network, its loss and an accuracy metric; logs `<stage>/loss` and `<stage>/acc`.

    `optimizer` is a partial optimizer (Hydra's `_partial_: true`) called with the parameters;
    `scheduler`, if any, is Lightning's lr_scheduler dict (`interval`, `frequency`, `monitor`, ...)
    with the partial schedule under `schedule`. Training is Lightning's own: one minibatch and one
    optimizer step per training_step call, automatic optimization.

    Subclasses set the task: its `criteria()`, `input_shape` of one example and the
    `output_shape` the loss needs, and for a classification task its `num_classes`: its first
    loss (`train/first_loss`, kept for every task to judge divergence by) is then checked against
    a uniform guess's and its test set calibration measured (`test/ece`).
    """

    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    num_classes: int | None = None  # None: the loss is not a cross-entropy over classes

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory | None = None,
        scheduler: dict | None = None,
    ):
        super().__init__()
        # Plain values only (the network's settings are in the run's config), so that every
        # checkpoint loads with weights-only loading.
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        self.net = net
        self.loss, accuracy = self.criteria()
        # One metric object per stage: their running states must not mix.
        self.train_acc, self.val_acc, self.test_acc = (accuracy.clone() for _ in range(3))
        self.val_loss, self.test_loss = SampleMean(), SampleMean()
        # The epoch's training loss over its samples: each minibatch's mean weighted by its size.
        # NaN passes through (the finite check below names the step).
        self.train_loss = MeanMetric(nan_strategy="disable")
        # A classifier's expected calibration error on the test set, with torchmetrics' defaults
        # (the usual ECE): 15 equal-width confidence bins, l1 norm.
        self.test_ece = None
        if self.num_classes:
            self.test_ece = MulticlassCalibrationError(self.num_classes, validate_args=False)
        self.optimizer_factory = optimizer
        self.scheduler = scheduler
        # Lightning's model summary runs it to show each layer's sizes and FLOPs.
        self.example_input_array = torch.zeros(2, *self.input_shape)
        check_fits(net, self.example_input_array, self.output_shape)
        self.first_loss: float | None = None  # this fit's loss before its first optimizer step
        # The first step whose loss was not finite (NO_STEP: none), and the loss it had.
        self.nonfinite: tuple[torch.Tensor, torch.Tensor] | None = None
        self.logged_epoch: int | None = None  # the epoch whose metrics this fit has logged
        self.resumed_metrics: dict | None = None  # a checkpoint's training metrics so far

    def criteria(self) -> tuple[nn.Module, Metric]:
        """The task's loss and its accuracy metric (one metric object, cloned for each stage)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    # A member of a population (src/population.py) logs through the module that holds it, under
    # a name of its own; alone, None.
    log_as: Callable | None = None

    def log(self, name: str, value, *args, **kwargs) -> None:
        if self.log_as is not None:
            return self.log_as(name, value, *args, **kwargs)
        return super().log(name, value, *args, **kwargs)

    # --- training ---------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.first_loss = None  # an earlier fit's

    def on_train_start(self) -> None:
        self.nonfinite = (torch.tensor(NO_STEP, device=self.device),
                          torch.tensor(0.0, device=self.device))  # fmt: skip
        self.logged_epoch = None

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """One minibatch, one optimizer step: Lightning's usual contract."""
        x, y = batch
        out = self.net(x)
        loss = self.loss(out, y)
        step = self.global_step  # the optimizer steps taken before this one
        # Before any optimizer step (a resumed run starts past it); once, as gradient
        # accumulation keeps step 0 for several minibatches.
        if step == 0 and self.first_loss is None:
            self.check_first_loss(loss.item())
        # Kept on the device (no wait for it each step), checked at logging steps and epoch ends.
        first, value = self.nonfinite
        new = ~loss.isfinite() & (first == NO_STEP)
        self.nonfinite = (torch.where(new, step, first), torch.where(new, loss.detach(), value))
        if self.logged_epoch != self.current_epoch:
            self.log_epoch_metrics()
        # Each sample's share: the batch's mean once per sample, as torchmetrics 1.9 drops the
        # weights of a MeanMetric that does not look for NaNs (which would wait for the device).
        self.train_loss.update(loss.detach().expand(len(y)))
        self.train_acc.update(out.detach(), y)
        trainer = self.trainer
        # The steps whose values Lightning sends to the loggers (its log_every_n_steps rule).
        if (step + 1) % trainer.log_every_n_steps == 0 or trainer.should_stop:
            self.check_finite()
            self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False)
        return loss

    def log_epoch_metrics(self) -> None:
        """Log the epoch's training loss and accuracy, at its first step in this fit.

        A logged Metric object is computed over the epoch and reset by Lightning at its end, so
        one self.log call per epoch is enough (each costs about as much as a whole step of the
        primer's networks); its states sync across DDP ranks themselves. A fit resumed in the
        middle of an epoch first takes up that epoch's states from the checkpoint.
        """
        saved, self.resumed_metrics = self.resumed_metrics, None
        if saved and saved["epoch"] == self.current_epoch:
            for metric, state in ((self.train_loss, saved["loss"]), (self.train_acc, saved["acc"])):
                for name, value in state.items():
                    setattr(metric, name, value.to(self.device))
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        self.logged_epoch = self.current_epoch

    def on_train_epoch_end(self) -> None:
        self.check_finite()
        first = self.first_loss
        if first is not None and first > 0 and self.train_loss.update_count:
            loss = self.train_loss.compute().item()  # what Lightning logs as train/loss
            if loss > DIVERGED_ABOVE * first:
                self.diverged(
                    f"train/loss of epoch {self.current_epoch + 1} was {loss:.4g}, "
                    f"more than {DIVERGED_ABOVE:g} times its first loss {first:.4g},"
                )

    def check_first_loss(self, first: float) -> None:
        """Keep the loss before the first optimizer step; for a classifier, say how it compares
        with ln C. Log it.

        It is the first step's own loss, from the forward pass that step makes anyway, so the run
        takes the same steps with or without it. An extra pass would change them or measure
        something else: in train mode it draws dropout masks (the run's random numbers) and moves
        batch-norm statistics; in eval mode it is not the loss the first update follows.
        """
        self.first_loss = first
        if self.trainer.is_global_zero:
            for logger in self.loggers:
                logger.log_metrics({"train/first_loss": first}, step=0)
        if not self.num_classes:
            return
        uniform, classes = math.log(self.num_classes), self.num_classes
        said = f"first loss {first:.2f} (a uniform guess over {classes} classes gives " \
               f"ln {classes} = {uniform:.2f})"  # fmt: skip
        if abs(first - uniform) <= FIRST_LOSS_TOLERANCE:
            log.info("%s: as expected", said)
        elif first < uniform:
            log.warning(
                "%s: far below it, as if the network knew the labels before training. Likely "
                "causes: weights that are not freshly initialized (expected when fine-tuning a "
                "trained network), or labels that leak into the inputs", said,
            )  # fmt: skip
        else:  # far above, or not a number
            log.warning(
                "%s: far above it, so the network starts out confidently wrong. Likely causes: "
                "initial weights or logits too large (a custom init or scale of the output "
                "layer), or inputs not scaled (pixels in 0-255 rather than [0, 1])", said,
            )  # fmt: skip

    def check_finite(self) -> None:
        """Raise Diverged, naming the first step whose loss was not finite, if there was one
        (counted from 1, as global_step counts). Each check waits for the device."""
        first, value = self.nonfinite
        if first.item() != NO_STEP:
            self.diverged(f"train/loss became {value.item()} at step {first.item() + 1} "
                          f"(epoch {self.current_epoch + 1})")  # fmt: skip

    def diverged(self, what: str) -> None:
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        raise Diverged(f"{what} with learning rate {lr:g}: lower optimizer.lr or change the "
                       "optimizer")  # fmt: skip

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The epoch's training metrics so far (a few numbers): a run stopped in the middle of an
        # epoch (SIGTERM) resumes it as if it had never stopped. The first loss, for the record.
        checkpoint["train_metrics"] = {
            "epoch": self.current_epoch,
            "loss": self.train_loss.metric_state,
            "acc": self.train_acc.metric_state,
        }
        checkpoint["first_loss"] = self.first_loss

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.resumed_metrics = checkpoint.get("train_metrics")
        self.first_loss = checkpoint.get("first_loss")

    # --- evaluation -------------------------------------------------------------------------

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self.eval_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self.eval_step(batch, "test")

    def eval_step(self, batch: Batch, stage: str) -> None:
        x, y = batch
        out = self.net(x)
        # Metric objects whose states are sums, synced once at the epoch's end: under DDP the
        # ranks hold unequal shares of the set (src/data/tensors.py, EvalShard), over which a
        # mean of the ranks' means would be wrong, and may run unequal numbers of batches, so
        # nothing here may sync per step.
        loss, acc = getattr(self, f"{stage}_loss"), getattr(self, f"{stage}_acc")
        loss.update(self.loss(out, y), len(y))
        acc.update(out, y)
        self.log(f"{stage}/loss", loss, prog_bar=True)
        self.log(f"{stage}/acc", acc, prog_bar=True)
        if stage == "test" and self.test_ece is not None:
            # torchmetrics takes outputs that all lie in [0, 1] for probabilities and softmaxes
            # only the others: given logits, a batch of small ones would be misread.
            self.test_ece.update(out.softmax(dim=1), y)
            self.log("test/ece", self.test_ece)

    # --- optimization -----------------------------------------------------------------------

    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise ValueError("no optimizer given: pass a partial optimizer to train this module")
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.lr_scheduler(optimizer)}

    def lr_scheduler(self, optimizer: torch.optim.Optimizer) -> dict:
        """Lightning's lr_scheduler dict: the config's, with its schedule built on `optimizer`."""
        config = dict(self.scheduler)
        schedule = config.pop("schedule")
        # Lightning's own default for a schedule that names no interval.
        interval = config.setdefault("interval", LRSchedulerConfig.interval)
        config["scheduler"] = schedule(optimizer, **self.run_length(schedule, interval))
        return config

    def run_length(self, schedule: functools.partial, interval: str) -> dict[str, int]:
        """The run's length for a schedule that runs over the whole run: steps or epochs by
        interval."""
        trainer = self.trainer
        total = trainer.estimated_stepping_batches if interval == "step" else trainer.max_epochs
        return run_length(schedule, int(total))


class SampleMean(Metric):
    """The mean over samples of minibatch means, each weighted by its minibatch's size.

    Its states are sums (as Lightning keeps a logged tensor's, with the same float operations, so
    one process gets the same value to the bit), so it stays exact over DDP ranks holding
    different numbers of samples. MeanMetric takes weights only with its NaN check, which waits
    for the device at each update and drops NaNs; here a NaN loss passes through.
    """

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, mean: torch.Tensor, size: int) -> None:
        self.total = self.total + mean * size
        self.count = self.count + size

    def compute(self) -> torch.Tensor:
        return self.total / self.count


def check_fits(net: nn.Module, example: torch.Tensor, output_shape: tuple[int, ...]) -> None:
    """Refuse, in one line, a network that cannot take `example` or whose output is not
    (batch, *output_shape): the loss would fail deep inside with a less helpful message."""
    needed = (len(example), *output_shape)
    training = net.training
    net.eval()  # e.g. batch norm: no running statistics updated by this check
    try:
        with torch.no_grad():
            out = net(example)
    except Exception as err:  # whatever the net raises, the cause is the input it was given
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise NetworkMismatch(
            f"{type(net).__name__} cannot take a batch of shape {tuple(example.shape)} "
            f"({reason}); this task needs outputs of shape {needed}"
        ) from None
    finally:
        net.train(training)
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != needed:
        raise NetworkMismatch(
            f"{type(net).__name__} gives outputs of shape {shape} for a batch of shape "
            f"{tuple(example.shape)}; this task needs {needed}"
        )
