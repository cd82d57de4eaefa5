"""Lightning's TQDM progress bar, with epochs numbered as the epoch table numbers them."""

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar


class EpochProgressBar(TQDMProgressBar):
    """Shows `Epoch 1/5` where Lightning's bar shows `Epoch 0`; position and total are the same
    (optimizer steps of the epoch)."""

    def on_train_epoch_start(self, trainer: L.Trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        of = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch + 1}{of}")
