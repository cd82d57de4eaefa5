"""Canaries for src/modules/lightning_internals.py: each fails with a plain message when the part of
Lightning it relies on has moved (after an upgrade), before any result can silently change."""

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from src.modules.lightning_internals import count_extra_step


class Steps(L.LightningModule):
    """Three minibatches per epoch, drawn by one `dataloader_iter` training_step call that steps
    on the first two itself, as a group does, and hands the third to Lightning."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(1, 1)

    def training_step(self, dataloader_iter):
        optimizer = self.trainer.optimizers[0]
        for i in range(3):
            (x,), _, _ = next(dataloader_iter)
            loss = self.layer(x).square().mean()
            if i == 2:
                return loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            count_extra_step(self.trainer)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.ones(6, 1)), batch_size=2)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        config = {"scheduler": schedule, "interval": "epoch"}
        return {"optimizer": optimizer, "lr_scheduler": config}


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, accelerator="cpu",
                        enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path_factory.mktemp("internals"))  # fmt: skip
    trainer.fit(Steps())
    return trainer


def test_the_counts_count_extra_step_advances_are_lightnings_own(trainer):
    epoch_loop = trainer.fit_loop.epoch_loop
    try:
        steps = epoch_loop.automatic_optimization.optim_progress.optimizer.step.total.completed
        batches = epoch_loop.batch_progress.total.completed
        logging_step = epoch_loop._batches_that_stepped
    except AttributeError as err:
        pytest.fail(f"Lightning moved a count that count_extra_step advances: {err}")
    if not (trainer.global_step == steps == 6 and batches == 6 and logging_step == 6):
        pytest.fail(
            "trainer.global_step, the batch count or the logging step is no longer kept where "
            f"count_extra_step advances it (global_step {trainer.global_step}, steps {steps}, "
            f"batches {batches}, logging step {logging_step}, all should be 6): see "
            "src/modules/lightning_internals.py"
        )


def test_with_every_minibatch_counted_lightning_ends_each_epoch_as_its_own(trainer):
    # The epoch schedule stepped once per epoch: Lightning saw each epoch's last minibatch.
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    if lr != pytest.approx(0.1 * 0.5**2):
        pytest.fail(
            f"after two epochs the learning rate is {lr}, not 0.025: Lightning no longer ends a "
            "grouped epoch on its batch count; see src/modules/lightning_internals.py"
        )
