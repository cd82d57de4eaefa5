"""A checkpoint of the moment a run is stopped, to resume from."""

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException


class CheckpointOnStop(L.Callback):
    """When a fit is stopped by SIGTERM (what a cluster scheduler or `kill` sends) or Ctrl-C,
    save its state as `path` (checkpoints/last.ckpt): Lightning stops between training_step
    calls, so the checkpoint is a consistent moment to resume from, mid-epoch or not."""

    def __init__(self, path: str):
        self.path = path

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception) -> None:
        stopped = isinstance(exception, (SIGTERMException, KeyboardInterrupt))
        if stopped and trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            trainer.save_checkpoint(self.path, weights_only=False)  # the whole state, to resume
