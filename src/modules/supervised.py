"""The training, validation and test steps shared by every experiment."""

from collections.abc import Callable, Iterable

import lightning as L
import torch
from lightning.pytorch.plugins import Precision
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn
from torchmetrics import Metric

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
Batch = tuple[torch.Tensor, torch.Tensor]

# What Lightning's backward and optimizer-step wrappers exist for, besides the step itself.
STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")


class Diverged(RuntimeError):
    """The training loss stopped being a finite number."""


class SupervisedModule(L.LightningModule):
    """A net, its loss and an accuracy metric; logs `<stage>/loss` and `<stage>/acc`.

    `optimizer` is a partial optimizer (Hydra's `_partial_: true`) called with the parameters.

    One `training_step` call runs a group of minibatches, each its own optimizer step (the data
    modules' `batches_per_call`). Lightning's per-call work (hooks, logging, progress bar) costs
    as much as a step of these small nets, so paying it once per group is what keeps training
    close to a plain PyTorch loop; what the net learns is the same step for step.
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        accuracy: Metric,
        optimizer: OptimizerFactory | None = None,
    ):
        super().__init__()
        self.net = net
        self.loss = loss
        # One metric object per stage: their running states must not mix.
        self.train_acc, self.val_acc, self.test_acc = (accuracy.clone() for _ in range(3))
        self.optimizer_factory = optimizer
        self.automatic_optimization = False
        self.direct_steps = False
        self.epoch_loss: list[torch.Tensor] = []  # summed over each call's samples
        self.epoch_samples = 0

    def on_train_start(self) -> None:
        # Lightning's manual_backward and LightningOptimizer.step add hooks, gradient scaling and
        # DDP's gradient sync: about 0.1 ms a step, as much as a step of the MLP. With one process
        # at full precision and no module or callback listening to those hooks they have nothing
        # to do, so the steps call PyTorch directly and only keep Lightning's step count.
        trainer = self.trainer
        self.direct_steps = (
            isinstance(trainer.strategy, SingleDeviceStrategy)
            and type(trainer.precision_plugin) is Precision
            and not any(is_overridden(hook, self) for hook in STEP_HOOKS)
            and not any(
                is_overridden(hook, callback, L.Callback)
                for hook in STEP_HOOKS
                for callback in trainer.callbacks
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batches: Iterable[Batch], batch_idx: int) -> None:
        max_steps = self.trainer.max_steps
        # max_steps need not fall on a group boundary.
        steps_left = max_steps - self.global_step if max_steps >= 0 else len(batches)
        losses, outputs, targets = self._take_steps(batches, steps_left)
        if losses:
            self._record(torch.stack(losses), outputs, targets)
        if 0 <= max_steps <= self.global_step:
            # Also mid-epoch: ask for the stop Lightning makes for early stopping, which
            # validates (and checkpoints) the final weights; reaching max_steps alone does not.
            self.trainer.should_stop = True
            self._log_epoch()
        elif batch_idx + 1 == self.trainer.num_training_batches:
            self._log_epoch()

    def _take_steps(self, batches: Iterable[Batch], steps_left: int) -> tuple[list, list, list]:
        """One optimizer step per minibatch; returns their losses, outputs and targets."""
        optimizer = self.optimizers()
        net, loss_fn = self.net, self.loss
        losses, outputs, targets = [], [], []
        for x, y in batches:
            if len(losses) == steps_left:
                break
            out = net(x)
            loss = loss_fn(out, y)
            optimizer.zero_grad()
            if self.direct_steps:
                loss.backward()
                optimizer._on_before_step()  # Lightning's step count (and profiler), as step() does
                optimizer.optimizer.step()
                optimizer._on_after_step()
            else:
                self.manual_backward(loss)
                optimizer.step()
            losses.append(loss.detach())
            outputs.append(out.detach())
            targets.append(y)
        return losses, outputs, targets

    def _record(self, losses: torch.Tensor, outputs: list, targets: list) -> None:
        """Check and log a call's steps, and add them to the epoch's loss and accuracy."""
        self._check_finite(losses)
        self._log_steps(losses)
        sizes = [len(y) for y in targets]
        self.epoch_loss.append((losses * torch.tensor(sizes, device=losses.device)).sum())
        self.epoch_samples += sum(sizes)
        self.train_acc.update(torch.cat(outputs), torch.cat(targets))
        # Lightning advances its logging step once per call; count optimizer steps instead, so
        # that epoch curves, the learning rate and train/loss_step share one x-axis.
        self.trainer.fit_loop.epoch_loop._batches_that_stepped += len(losses) - 1

    def _log_epoch(self) -> None:
        """The epoch's training loss and accuracy, logged once: a self.log call costs as much as
        a step. sync_dist: under DDP they are averaged over every rank's share of the data (the
        accuracy metric object syncs its counts itself)."""
        if self.epoch_samples:
            loss = torch.stack(self.epoch_loss).sum() / self.epoch_samples
            self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True,
                     batch_size=self.epoch_samples, sync_dist=True)  # fmt: skip
            self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True,
                     batch_size=self.epoch_samples)  # fmt: skip
        self.epoch_loss, self.epoch_samples = [], 0

    def _check_finite(self, losses: torch.Tensor) -> None:
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            i = int(bad[0])
            step = self.global_step - len(losses) + i + 1  # counted from 1, as global_step is
            lr = self.trainer.optimizers[0].param_groups[0]["lr"]
            raise Diverged(
                f"train/loss became {losses[i].item()} at step {step} "
                f"(epoch {self.current_epoch}) with learning rate {lr:g}: "
                "lower optimizer.lr or change the optimizer"
            )

    def _log_steps(self, losses: torch.Tensor) -> None:
        """train/loss_step of every `trainer.log_every_n_steps`-th optimizer step, at Lightning's
        x-axis position for it: the number of steps taken before it."""
        every = self.trainer.log_every_n_steps
        first = self.global_step - len(losses)  # steps taken before this call's first one
        picks = [i for i in range(len(losses)) if every and (first + i + 1) % every == 0]
        if not picks or not self.trainer.is_global_zero:
            return
        for i, value in zip(picks, losses[picks].tolist(), strict=True):
            for logger in self.loggers:
                logger.log_metrics({"train/loss_step": value}, step=first + i)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_step(self, batch: Batch, stage: str) -> None:
        x, y = batch
        out = self.net(x)
        acc = getattr(self, f"{stage}_acc")
        acc.update(out, y)
        self.log(f"{stage}/loss", self.loss(out, y), prog_bar=True, sync_dist=True)
        self.log(f"{stage}/acc", acc, prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_factory is None:
            raise ValueError("no optimizer given: pass a partial optimizer to train this module")
        return self.optimizer_factory(self.parameters())
