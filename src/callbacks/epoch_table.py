"""The primer's end-of-run table: one row per epoch with its losses, accuracies and time."""

import math
import time

import lightning as L

from src.names import FINAL_METRICS

COLUMNS = (
    ("train/loss", "loss"),
    ("train/acc", "train acc"),
    ("val/loss", "val loss"),
    ("val/acc", "val acc"),
)
MAX_ROWS, SHOWN_ROWS = 25, 20  # a table longer than MAX_ROWS epochs shows about SHOWN_ROWS


class EpochTable(L.Callback):
    """Keeps every epoch's metrics and duration, and formats them as a table.

    The rows travel in checkpoints, so a resumed run still knows (and prints) its whole history:
    `train_seconds` covers every epoch it ever trained, and `earlier_fit_seconds` the time its
    earlier fits (the ones it resumed from) took up to their last checkpoint.
    """

    def __init__(self):
        self.rows: list[dict[str, float]] = []
        self.clock = 0.0
        self.earlier_fit_seconds = 0.0
        self.loaded_fit_seconds = 0.0  # of the checkpoint read last
        self.fit_started = time.perf_counter()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A resumed fit's checkpoint is read before this hook; the one a test reads after the fit
        # (the same fit's) adds no earlier time.
        self.earlier_fit_seconds = self.loaded_fit_seconds
        self.fit_started = time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.clock = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        now = time.perf_counter()
        # From the end of the previous epoch (or the start of training): validation included.
        row = {"epoch": trainer.current_epoch + 1, "seconds": now - self.clock}
        row.update({key: float(metrics[key]) for key, _ in COLUMNS if key in metrics})
        self.rows.append(row)
        self.clock = now

    @property
    def train_seconds(self) -> float:
        """The time of every epoch in the table, validation included."""
        return sum(row["seconds"] for row in self.rows)

    def state_dict(self) -> dict:
        fit_seconds = self.earlier_fit_seconds + time.perf_counter() - self.fit_started
        return {"rows": self.rows, "fit_seconds": fit_seconds}

    def load_state_dict(self, state_dict: dict) -> None:
        self.rows = list(state_dict["rows"])
        self.loaded_fit_seconds = state_dict.get("fit_seconds", 0.0)

    def render(self, test: dict[str, float | None]) -> str:
        """The table as text, with the test metrics underneath; a table of more than MAX_ROWS
        epochs shows about SHOWN_ROWS of them (the rows stay whole in the checkpoints, the values
        in the logged curves)."""
        header = ["epoch"] + [title for _, title in COLUMNS] + ["seconds"]
        lines = ["  ".join(f"{h:>9}" for h in header)]
        rows, every = shown_rows(self.rows)
        for row in rows:
            cells = [f"{row['epoch']:>9}"] + [
                f"{format_metric(key, row.get(key)):>9}" for key, _ in COLUMNS
            ]
            cells.append(f"{row['seconds']:>9.1f}")
            lines.append("  ".join(cells))
        if every > 1:
            lines.append(f"({len(rows)} of {len(self.rows)} epochs: the first, the last and one "
                         f"in {every}; the logged curves have them all)")  # fmt: skip
        for key in (k for k in FINAL_METRICS if k.startswith("test/")):
            if key in test:
                lines.append(f"{key}: {format_metric(key, test[key])}")
        return "\n".join(lines)


def shown_rows(rows: list[dict]) -> tuple[list[dict], int]:
    """The rows a person reads at the end of a run, and one in how many they are: all up to
    MAX_ROWS; of a longer table (+debug=overfit trains 500 epochs) the first, the last and every
    epoch whose number is a multiple of the step that leaves about SHOWN_ROWS."""
    if len(rows) <= MAX_ROWS:
        return rows, 1
    every = math.ceil(len(rows) / SHOWN_ROWS)
    last = len(rows) - 1
    return [row for i, row in enumerate(rows)
            if i in (0, last) or row["epoch"] % every == 0], every  # fmt: skip


def format_metric(key: str, value: float | None) -> str:
    """Accuracies as percentages, losses with four decimals, missing values as '-'."""
    if value is None:
        return "-"
    if key.endswith("acc") and math.isfinite(value):
        return f"{100 * value:.2f} %"
    return f"{value:.4f}"
