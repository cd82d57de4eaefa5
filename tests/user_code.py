"""What a Lightning user adds to a run, for the tests: the most ordinary callbacks and a subclass of
the project's module, each written as Lightning's documentation writes them."""

import json
from pathlib import Path

import lightning as L
import torch

from src.modules import DigitModule


class EpochEndLogger(L.Callback):
    """Logs at the end of each training and each validation epoch."""

    def on_train_epoch_end(self, trainer, pl_module):
        norm = torch.stack([p.norm() for p in pl_module.parameters()]).norm()
        pl_module.log("user/weight_norm", norm)

    def on_validation_epoch_end(self, trainer, pl_module):
        pl_module.log("user/val_epoch", float(trainer.current_epoch))


class StepRecorder(L.Callback):
    """Writes the `trainer.global_step` each on_train_batch_end saw, as JSON, when training ends."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.seen: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append(trainer.global_step)

    def on_train_end(self, trainer, pl_module):
        self.path.write_text(json.dumps(self.seen))


class StepLoggingDigitModule(DigitModule):
    """A subclass that logs its own value at every step."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log("user/loss", loss, on_step=True, on_epoch=False)
        return loss
