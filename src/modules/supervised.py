"""The training, validation and test steps shared by every experiment."""

from collections.abc import Callable, Iterable

import lightning as L
import torch
from torch import nn
from torchmetrics import Metric

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]

STAGES = ("train", "val", "test")


class Diverged(RuntimeError):
    """The training loss stopped being a finite number."""


class SupervisedModule(L.LightningModule):
    """A net, its loss and an accuracy metric; logs `<stage>/loss` and `<stage>/acc`.

    `optimizer` is a partial optimizer (Hydra's `_partial_: true`) called with the parameters.
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
        self.train_acc, self.val_acc, self.test_acc = (accuracy.clone() for _ in STAGES)
        self.optimizer_factory = optimizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        out = self.net(x)
        loss = self.loss(out, y)
        acc = getattr(self, f"{stage}_acc")
        acc(out, y)
        per_step = stage == "train"
        # sync_dist: under DDP the epoch values are averaged over every rank's share of the data
        # (the accuracy metric object syncs its counts itself).
        self.log(
            f"{stage}/loss", loss, on_step=per_step, on_epoch=True, prog_bar=True, sync_dist=True
        )
        self.log(f"{stage}/acc", acc, on_step=per_step, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")
        if not torch.isfinite(loss):
            lr = self.trainer.optimizers[0].param_groups[0]["lr"]
            raise Diverged(
                f"train/loss became {loss.item()} at step {self.global_step + 1} "
                f"(epoch {self.current_epoch}) with learning rate {lr:g}: "
                "lower optimizer.lr or change the optimizer"
            )
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_factory is None:
            raise ValueError("no optimizer given: pass a partial optimizer to train this module")
        return self.optimizer_factory(self.parameters())
