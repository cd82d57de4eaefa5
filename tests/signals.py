"""A test-only callback: the process sends itself SIGTERM at the start or the end of an epoch,
after a given optimizer step, as fit ends (before testing) or as testing starts, as a cluster
scheduler would at any moment.
Lightning stops at the end of an epoch when the signal comes there, else after the next
training_step call: in the middle of the epoch. It tests on through one.

In a sweep, `to="parent"` sends it to the sweep's process from a job in a worker process, and
`once` (a file path) sends it from the first job only, as one `kill` would: the sweep run again
with the same settings goes on undisturbed. Under DDP, `rank` sends it from that global rank only:
with `to="parent"` under torchrun, to the launcher of that rank's node."""

import os
import signal

import lightning as L


class Sigterm(L.Callback):
    def __init__(self, epoch: int = 0, at: str = "", step: int | None = None, to: str = "self",
                 once: str | None = None, rank: int | None = None):  # fmt: skip
        self.epoch = epoch  # counted from 1
        self.at = at  # "start", "end", "fit_end" or "test"
        self.step = step  # or after this many optimizer steps
        self.to = to  # "self" or "parent"
        self.once = once
        self.rank = rank
        self.global_rank = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.global_rank = trainer.global_rank

    def kill(self) -> None:
        if self.rank is not None and self.rank != self.global_rank:
            return
        if self.once:
            try:
                os.close(os.open(self.once, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return  # sent already
        os.kill(os.getppid() if self.to == "parent" else os.getpid(), signal.SIGTERM)

    def send(self, trainer: L.Trainer, at: str) -> None:
        if trainer.current_epoch + 1 == self.epoch and at == self.at:
            self.kill()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.send(trainer, "start")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.send(trainer, "end")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            self.kill()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at == "fit_end":
            self.kill()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at == "test":
            self.kill()
