"""A checkpoint of the moment a run is stopped, to resume from; every DDP rank stopped at once."""

import signal

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from src import sigterm


class CheckpointOnStop(L.Callback):
    """When a fit is stopped by SIGTERM (what a cluster scheduler or `kill` sends) or Ctrl-C,
    save its state as `path` (checkpoints/last.ckpt): Lightning stops between training_step
    calls, so the checkpoint is a consistent moment to resume from, mid-epoch or not."""

    def __init__(self, path: str):
        self.path = path
        self.between_epochs = False  # the stop came after an epoch's end, before the next one

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception) -> None:
        stopped = isinstance(exception, (SIGTERMException, KeyboardInterrupt))
        if stopped and trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            epochs = trainer.fit_loop.epoch_progress.current
            self.between_epochs = epochs.ready == epochs.completed  # travels in the checkpoint
            try:
                trainer.save_checkpoint(self.path, weights_only=False)  # the whole state
            finally:
                self.between_epochs = False

    def state_dict(self) -> dict:
        return {"between_epochs": self.between_epochs}

    def load_state_dict(self, state_dict: dict) -> None:
        self.between_epochs = state_dict.get("between_epochs", False)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Resumed from a stop between epochs, this epoch is a new one, not the rest of one.

        A SIGTERM that comes as an epoch ends stops Lightning once that epoch is counted
        complete. With `max_steps` set, Lightning 2.6 resumes every checkpoint as a restart
        inside an epoch, whichever moment it holds: the finished epoch's batch counts carried
        into this one, which then ended at once without a step (a NAND run of 10 epochs of 100
        steps, stopped after its first, ended `completed` at 900 steps). Telling the epoch loop
        it is not restarting gives the start every other epoch gets: counts zeroed, the first
        batch trained. (tests/test_interruptions.py checks it against an undisturbed run.)
        """
        if self.between_epochs:
            trainer.fit_loop.epoch_loop.restarting = False
            self.between_epochs = False


class StopTogether(L.Callback):
    """Under DDP, a SIGTERM to any rank stops every rank at the same step, where Lightning stops
    one process: each saves its part of the checkpoint and the run is recorded `interrupted`.

    Lightning's own SIGTERM handler broadcasts from rank 0 at whatever moment the signal comes.
    On any other rank that broadcast meets no partner and every rank hangs (Lightning issue
    #20806); torchrun passes a node's SIGTERM to that node's ranks only. So while Lightning
    trains and tests, SIGTERM is again the handler it found (src/sigterm.py, which notes it);
    after each training step and epoch the ranks decide together whether any was sent one, and
    if so every rank hands the signal to Lightning's handler at that same moment.
    """

    def __init__(self):
        self.noting = None  # the handler Lightning found
        self.lightning = None  # Lightning's, put aside while it runs

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.world_size > 1:  # Lightning sets its handler after setup, before running
            self.noting = signal.getsignal(signal.SIGTERM)

    def put_aside(self, trainer: L.Trainer) -> None:
        current = signal.getsignal(signal.SIGTERM)
        if trainer.world_size > 1 and current is not self.noting:
            self.lightning = current
            signal.signal(signal.SIGTERM, self.noting)

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.put_aside(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.put_aside(trainer)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.put_aside(trainer)  # a SIGTERM while testing: src/train.py asks every rank after

    def stop_if_asked(self, trainer: L.Trainer) -> None:
        if trainer.world_size > 1 and stop_asked(trainer) and not trainer.received_sigterm:
            if self.lightning is None:
                raise SIGTERMException
            self.lightning(signal.SIGTERM, None)  # Lightning stops after this step, as for one

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.stop_if_asked(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.stop_if_asked(trainer)


def stop_asked(trainer: L.Trainer) -> bool:
    """Whether this process, or under DDP any rank, has been sent SIGTERM (src/sigterm.py); the
    ranks ask together, so each gets the same answer."""
    return trainer.strategy.reduce_boolean_decision(sigterm.received(), all=False)
