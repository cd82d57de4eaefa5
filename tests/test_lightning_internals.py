"""Canaries for src/modules/lightning_internals.py: each fails with a plain message when the part of
Lightning it relies on has moved (after an upgrade), before any result can silently change."""

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Steps(L.LightningModule):
    """An epoch schedule, and a `dataloader_iter` training_step that draws an epoch's three batches
    in one call, as a group of steps does (here for one optimizer step per epoch)."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(1, 1)

    def training_step(self, dataloader_iter):
        loss = sum(self.layer(x).square().mean() for (x,), _, _ in dataloader_iter)
        return loss

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


def test_the_step_counts_are_where_count_extra_step_advances_them(trainer):
    epoch_loop = trainer.fit_loop.epoch_loop
    try:
        step = epoch_loop.automatic_optimization.optim_progress.optimizer.step
        logging_step = epoch_loop._batches_that_stepped
    except AttributeError as err:
        pytest.fail(f"Lightning moved a step count that count_extra_step advances: {err}")
    if not (step.total.completed == trainer.global_step == logging_step == 2):
        pytest.fail("trainer.global_step or the logging step is no longer counted where "
                    "count_extra_step advances them: see src/modules/lightning_internals.py")
    assert callable(step.increment_by)


def test_lightning_still_skips_epoch_schedules_after_a_dataloader_iter_step(trainer):
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    if lr != pytest.approx(0.1):
        pytest.fail("Lightning now steps epoch schedules after a dataloader_iter training_step "
                    f"(lr went from 0.1 to {lr}): step_epoch_schedules would step them twice; "
                    "drop it from src/modules/lightning_internals.py")
