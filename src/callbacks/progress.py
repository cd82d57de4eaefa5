"""Lightning's TQDM progress bar, with epochs numbered as the epoch table numbers them; where the
console is a file (nohup, SLURM, `> log`), a line of its own at each refresh."""

import contextlib
import functools
import os
import sys

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar


class EpochProgressBar(TQDMProgressBar):
    """Shows `Epoch 1/5` where Lightning's bar shows `Epoch 0`; position and total are the same
    (optimizer steps of the epoch).

    On a terminal this is Lightning's bar, redrawn in place. Anywhere else each redraw would stay
    in the file, several per refresh (a bar redraws for its position, then for its metrics, its
    description, its closing), glued to whatever is printed next. There the same bars draw into
    os.devnull, and each refresh (every `refresh_rate` batches, and a loop's last batch) is
    written once, as a line of its own. The last of a training epoch is written at the epoch's
    end, once it carries the epoch's validation and training metrics.
    """

    terminal = True  # set at setup: whether stdout, where the bars draw, is a terminal
    train_line_at: int | None = None  # the position of the epoch's last line written

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.terminal = sys.stdout.isatty()

    # Lightning's bars, made as Lightning makes them; off a terminal they draw nowhere.
    def init_sanity_tqdm(self):
        return self.drawn(super().init_sanity_tqdm)

    def init_train_tqdm(self):
        return self.drawn(super().init_train_tqdm)

    def init_validation_tqdm(self):
        return self.drawn(super().init_validation_tqdm)

    def init_test_tqdm(self):
        return self.drawn(super().init_test_tqdm)

    def init_predict_tqdm(self):
        return self.drawn(super().init_predict_tqdm)

    def drawn(self, make):
        """The bar `make` returns: drawing on stdout on a terminal, into os.devnull elsewhere
        (Lightning gives a bar sys.stdout as it is when the bar is made, which draws at once)."""
        if self.terminal:
            return make()
        with contextlib.redirect_stdout(nowhere()):
            return make()

    def on_train_epoch_start(self, trainer: L.Trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        of = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch + 1}{of}")
        self.train_line_at = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bar = self.train_progress_bar
        if refreshed(bar, batch_idx) and bar.n != bar.total:  # the last: at the epoch's end
            self.write_line(bar)
            self.train_line_at = bar.n

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        bar = self.train_progress_bar
        # An epoch cut short (trainer.max_steps) may have ended on a line already written.
        if not bar.disable and bar.n and bar.n != self.train_line_at:
            self.write_line(bar)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int,
                                dataloader_idx: int = 0) -> None:  # fmt: skip
        super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx,
                                        dataloader_idx)  # fmt: skip
        if refreshed(self.val_progress_bar, batch_idx):
            self.write_line(self.val_progress_bar)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int,
                          dataloader_idx: int = 0) -> None:  # fmt: skip
        super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        if refreshed(self.test_progress_bar, batch_idx):
            self.write_line(self.test_progress_bar)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int,
                             dataloader_idx: int = 0) -> None:  # fmt: skip
        super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx,
                                     dataloader_idx)  # fmt: skip
        if refreshed(self.predict_progress_bar, batch_idx):
            self.write_line(self.predict_progress_bar)

    def write_line(self, bar) -> None:
        """The bar as it stands, as a line of its own (off a terminal only)."""
        if not self.terminal:
            print(bar, flush=True)  # flushed: `tail -f` of the file follows the run


def refreshed(bar, batch_idx: int) -> bool:
    """Whether Lightning has just refreshed `bar` at this batch: it moves a bar to the batch's
    position only at its refreshes, and not at all where the bar is disabled."""
    return not bar.disable and bar.n == batch_idx + 1


@functools.cache
def nowhere():
    """os.devnull, opened once for the process: the bars of every fit and test draw into it."""
    return open(os.devnull, "w")  # noqa: SIM115 (open as long as the process)
