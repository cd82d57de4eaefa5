"""What every task shares: a network fitted to a loss, with an accuracy, an optimizer and a
learning-rate schedule."""

import functools
import inspect
import logging
import math
import warnings
from collections.abc import Callable, Iterable, Iterator

import lightning as L
import torch
from torch import nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassCalibrationError

from src.errors import InputError
from src.modules.grouping import grouping_blocker
from src.modules.lightning_internals import count_extra_step

log = logging.getLogger(__name__)
# Lightning calls the `dataloader_iter` flavour of training_step experimental; its caveats (the
# batch_idx its hooks get, gradient accumulation) are exactly what grouping_blocker rules out.
warnings.filterwarnings("ignore", message="Found `dataloader_iter` argument in the `training_step`")

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


class Diverged(RuntimeError):
    """The training loss stopped being a finite number."""


class NetworkMismatch(InputError, ValueError):
    """The network cannot take the task's input, or its output does not fit the task's loss."""


class SupervisedModule(L.LightningModule):
    """A network, its loss and an accuracy metric; logs `<stage>/loss` and `<stage>/acc`.

    `optimizer` is a partial optimizer (Hydra's `_partial_: true`) called with the parameters;
    `scheduler`, if any, is Lightning's lr_scheduler dict (`interval`, `frequency`, `monitor`, ...)
    with the partial schedule under `schedule`.

    `steps_per_call` > 1 lets one training_step call take that many optimizer steps, one per
    minibatch, when nothing in the run can tell the difference (src/modules/grouping.py): the
    same minibatches, steps, logged values and weights, in a fraction of Lightning's time.
    Subclasses set the task: `input_shape` of one example and the `output_shape` the loss needs,
    and for a classification task its `num_classes`: its first loss is then checked against a
    uniform guess's (`train/first_loss`) and its test set calibration measured (`test/ece`).
    """

    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    num_classes: int | None = None  # None: the loss is not a cross-entropy over classes

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        accuracy: Metric,
        optimizer: OptimizerFactory | None,
        scheduler: dict | None,
        steps_per_call: int,
    ):
        super().__init__()
        self.net = net
        self.loss = loss
        # One metric object per stage: their running states must not mix.
        self.train_acc, self.val_acc, self.test_acc = (accuracy.clone() for _ in range(3))
        # A classifier's expected calibration error on the test set, with torchmetrics' defaults
        # (the usual ECE): 15 equal-width confidence bins, l1 norm.
        self.test_ece = None
        if self.num_classes:
            self.test_ece = MulticlassCalibrationError(self.num_classes, validate_args=False)
        self.optimizer_factory = optimizer
        self.scheduler = scheduler
        self.steps_per_call = steps_per_call
        self.grouped = False  # whether this fit takes steps_per_call steps per call (see setup)
        # Lightning's model summary runs it to show each layer's sizes and FLOPs.
        self.example_input_array = torch.zeros(2, *self.input_shape)
        check_fits(net, self.example_input_array, self.output_shape)
        # This epoch's (loss, output, target) of every step so far, from step number first_step.
        self.epoch_steps: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.first_step = 1
        self.checked = 0  # how many of epoch_steps' losses are known to be finite
        self.first_loss: float | None = None  # this fit's loss before its first optimizer step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    # --- training ---------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        # Decided before Lightning picks how to feed training_step: a `dataloader_iter` in its
        # signature makes Lightning hand over the iterator itself.
        self.teardown(stage)  # an earlier fit's choice
        if stage == "fit":
            self.first_loss = None  # an earlier fit's
        if stage != "fit" or self.steps_per_call == 1:
            return
        reason = grouping_blocker(
            self.trainer,
            self,
            base=SupervisedModule,
            optimizer=self.optimizer_class(),
            schedule_interval=self.scheduler["interval"] if self.scheduler else None,
        )
        if reason:
            log.info("one optimizer step per training_step call, as %s", reason)
        else:
            self.grouped = True
            self.training_step = self.training_steps

    def teardown(self, stage: str) -> None:
        self.grouped = False
        self.__dict__.pop("training_step", None)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # What the epoch's metrics need of its steps so far: a run stopped in the middle of an
        # epoch (SIGTERM) resumes it as if it had never stopped.
        checkpoint["epoch_steps"] = {
            "first_step": self.first_step,
            "losses": [loss for loss, _, _ in self.epoch_steps],
            "outputs": [out for _, out, _ in self.epoch_steps],
            "targets": [y for _, _, y in self.epoch_steps],
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        steps = checkpoint.get("epoch_steps")
        if not steps or not steps["losses"]:
            return
        self.first_step = steps["first_step"]
        parts = (steps["losses"], steps["outputs"], steps["targets"])
        self.epoch_steps = list(zip(*parts, strict=True))

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """One minibatch, one optimizer step: Lightning's usual contract."""
        return self.step_loss(batch, self.global_step, self.trainer.log_every_n_steps)

    def training_steps(self, dataloader_iter: Iterator) -> torch.Tensor:
        """Up to `steps_per_call` optimizer steps, one per minibatch drawn from the iterator.

        All but the last are taken here, as Lightning's automatic optimization would take them
        (forward, zero_grad, backward, step) and counted into its step counts; the last loss is
        returned for Lightning to step on, so that its hooks, schedules and callbacks see the
        call end on a step of their own, with its gradients.
        """
        trainer = self.trainer
        optimizer = trainer.optimizers[0]
        first, every = self.global_step, trainer.log_every_n_steps
        steps = self.steps_per_call
        if dataloader_iter.length is None:
            steps = 1  # data without a length: the epoch's last minibatch cannot be told
        if trainer.max_steps >= 0:
            steps = min(steps, trainer.max_steps - first)
        for i in range(steps):
            batch, _, _ = next(dataloader_iter)
            if i == 0 and batch[0].device != self.device:
                batch = self.transfer_batch_to_device(batch, self.device, 0)  # as Lightning does
            loss = self.step_loss(batch, first + i, every)
            if i + 1 == steps or dataloader_iter.done:
                return loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            count_extra_step(trainer)
        raise AssertionError("unreachable: the loop returns on its last step")

    def step_loss(self, batch: Batch, step: int, log_every: int) -> torch.Tensor:
        """The minibatch's loss, kept for the epoch's metrics and logged every `log_every` steps.
        `step`: the optimizer steps taken before this one, Lightning's x-axis for its values."""
        x, y = batch
        out = self.net(x)
        loss = self.loss(out, y)
        # Before any optimizer step (a resumed run starts past it: it has no first loss); once,
        # as gradient accumulation keeps step 0 for several minibatches.
        if step == 0 and self.num_classes and self.first_loss is None:
            self.check_first_loss(loss.item(), step)
        if not self.epoch_steps:
            self.first_step = step + 1
        self.epoch_steps.append((loss.detach(), out.detach(), y))
        if (step + 1) % log_every == 0:
            self.check_finite()
            if self.trainer.is_global_zero:
                for logger in self.loggers:
                    logger.log_metrics({"train/loss_step": loss.item()}, step=step)
        return loss

    def check_first_loss(self, first: float, step: int) -> None:
        """Say how the loss before the first optimizer step compares with ln C; log it.

        It is the first step's own loss, from the forward pass that step makes anyway, so the run
        takes the same steps with or without it, grouped or not. An extra pass would change them
        or measure something else: in train mode it draws dropout masks (the run's random numbers)
        and moves batch-norm statistics; in eval mode it is not the loss the first update follows.
        """
        self.first_loss = first
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
        if self.trainer.is_global_zero:
            for logger in self.loggers:
                logger.log_metrics({"train/first_loss": first}, step=step)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        trainer = self.trainer
        last_step = 0 <= trainer.max_steps <= self.global_step
        if trainer.is_last_batch or trainer.should_stop or last_step:
            self.log_epoch()  # the epoch ends here, however it ends

    def log_epoch(self) -> None:
        """The epoch's training loss and accuracy over its samples, logged once (a self.log call
        costs about as much as a step). sync_dist: under DDP, averaged over every rank's share
        (the accuracy metric object syncs its counts itself)."""
        if not self.epoch_steps:
            return
        self.check_finite()
        losses, outputs, targets = zip(*self.epoch_steps, strict=True)
        sizes = torch.tensor([len(y) for y in targets], device=losses[0].device)
        samples = int(sizes.sum())
        loss = (torch.stack(losses) * sizes).sum() / samples
        self.train_acc.update(torch.cat(outputs), torch.cat(targets))
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=samples, sync_dist=True)  # fmt: skip
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True,
                 batch_size=samples)  # fmt: skip
        self.epoch_steps, self.checked = [], 0

    def check_finite(self) -> None:
        """Raise Diverged, naming the first step whose loss was not finite, if there was one.
        Checked at logging steps and epoch ends only: each check waits for the device."""
        if self.checked == len(self.epoch_steps):
            return
        unchecked = torch.stack([loss for loss, _, _ in self.epoch_steps[self.checked :]])
        bad = (~torch.isfinite(unchecked)).nonzero()
        if len(bad):
            i = int(bad[0])
            step = self.first_step + self.checked + i  # counted from 1, as global_step counts
            lr = self.trainer.optimizers[0].param_groups[0]["lr"]
            raise Diverged(
                f"train/loss became {unchecked[i].item()} at step {step} "
                f"(epoch {self.current_epoch + 1}) with learning rate {lr:g}: "
                "lower optimizer.lr or change the optimizer"
            )
        self.checked = len(self.epoch_steps)

    # --- evaluation -------------------------------------------------------------------------

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self.eval_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self.eval_step(batch, "test")

    def eval_step(self, batch: Batch, stage: str) -> None:
        x, y = batch
        out = self.net(x)
        acc = getattr(self, f"{stage}_acc")
        acc.update(out, y)
        self.log(f"{stage}/loss", self.loss(out, y), prog_bar=True, sync_dist=True)
        self.log(f"{stage}/acc", acc, prog_bar=True)
        if stage == "test" and self.test_ece is not None:
            # torchmetrics takes outputs that all lie in [0, 1] for probabilities and softmaxes
            # only the others: given logits, a batch of small ones would be misread.
            self.test_ece.update(out.softmax(dim=1), y)
            self.log("test/ece", self.test_ece)

    # --- optimization -----------------------------------------------------------------------

    def optimizer_class(self) -> type:
        factory = self.optimizer_factory
        return factory.func if isinstance(factory, functools.partial) else type(None)

    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise ValueError("no optimizer given: pass a partial optimizer to train this module")
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler is None:
            return optimizer
        config = dict(self.scheduler)
        schedule = config.pop("schedule")
        config["scheduler"] = schedule(optimizer, **self.run_length(schedule, config["interval"]))
        return {"optimizer": optimizer, "lr_scheduler": config}

    def run_length(self, schedule: functools.partial, interval: str) -> dict[str, int]:
        """A schedule that runs over the whole run (CosineAnnealingLR's T_max, OneCycleLR's
        total_steps) and is not given its length gets the run's: steps or epochs by interval."""
        trainer = self.trainer
        total = trainer.estimated_stepping_batches if interval == "step" else trainer.max_epochs
        wanted = inspect.signature(schedule.func).parameters
        return {
            name: int(total)
            for name in ("T_max", "total_steps")
            if name in wanted and schedule.keywords.get(name) is None
        }


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
