"""A test-only callback: the process sends itself SIGTERM at the start or the end of an epoch,
after a given optimizer step, or as testing starts, as a cluster scheduler would at any moment.
Lightning stops at the end of an epoch when the signal comes there, else after the next
training_step call: in the middle of the epoch. It tests on through one."""

import os
import signal

import lightning as L


class Sigterm(L.Callback):
    def __init__(self, epoch: int = 0, at: str = "", step: int | None = None):
        self.epoch = epoch  # counted from 1
        self.at = at  # "start", "end" or "test"
        self.step = step  # or after this many optimizer steps

    def send(self, trainer: L.Trainer, at: str) -> None:
        if trainer.current_epoch + 1 == self.epoch and at == self.at:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.send(trainer, "start")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.send(trainer, "end")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at == "test":
            os.kill(os.getpid(), signal.SIGTERM)
