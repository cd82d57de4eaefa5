"""TensorBoard as this project's runs read best: train and val of a quantity on one chart, the
settings a person compares in HPARAMS, and no chart of Lightning's epoch counter."""

import time

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger
from omegaconf import DictConfig, OmegaConf
from tensorboard.plugins.hparams import summary_v2
from torch.utils.tensorboard.writer import FileWriter, SummaryWriter

from src.hparams import as_tensorboard_values, run_name

# CUSTOM SCALARS: each chart draws every tag its regular expression matches.
LAYOUT = {
    "train and val": {
        "loss": ["Multiline", [r"^(train|val)/loss$"]],
        "accuracy": ["Multiline", [r"^(train|val)/acc$"]],
        "learning rate": ["Multiline", [r"^train/lr"]],
    }
}
# The groups whose settings a person chooses, and the keys of them no one compares.
CHOSEN = ("model.net", "data", "optimizer", "scheduler")
PLUMBING = {
    "_partial_", "data_dir", "download", "seed", "split_seed", "eval_batch_size", "interval",
    "frequency", "name", "strict",
}  # fmt: skip


class TensorBoardLogger(LightningTensorBoardLogger):
    """Lightning's TensorBoardLogger, plus a CUSTOM SCALARS layout written with the run's first
    values, and `log_settings` for HPARAMS; Lightning's `epoch` value is left out (a staircase of
    the step axis; the epoch table and metrics.json count epochs)."""

    layout_written = False

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        if not self.layout_written:
            self.experiment.add_custom_scalars(LAYOUT)
            self.layout_written = True
        # Lightning adds `epoch` to every epoch-level value it logs.
        super().log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step)

    def log_settings(self, settings: dict) -> None:
        """The run's chosen settings in the HPARAMS tab, beside its final metrics.

        The row is named as TensorBoard names the run (`trial_id`, else a hash). Only the run's
        own session is written: a sweep's columns come from `write_sweep_columns` when it ends,
        a single run's from every run's settings.
        """
        values = as_tensorboard_values(settings)
        name, now = run_name(self.log_dir), time.time()
        row = summary_v2.hparams_pb(values, trial_id=name, start_time_secs=now)
        # An event file of its own beside the run's, whose writer Lightning has closed by now.
        writer = FileWriter(self.log_dir)
        writer.add_summary(row)
        writer.close()


def tensorboard_writer(trainer) -> SummaryWriter | None:
    """The run's TensorBoard SummaryWriter, where the pictures go; None when no TensorBoard logger
    is configured."""
    for logger in trainer.loggers:
        if isinstance(logger, LightningTensorBoardLogger):
            return logger.experiment
    return None


def chosen_settings(cfg: DictConfig) -> dict[str, bool | int | float | str]:
    """What a person picks and compares across runs: the experiment, seed and epochs, and the
    network, data, optimizer and schedule (each named by its class) with their values."""
    settings: dict[str, bool | int | float | str] = {
        "experiment": cfg.name,
        "seed": cfg.seed,
        "trainer.max_epochs": cfg.trainer.max_epochs,
    }
    for group in CHOSEN:
        node = OmegaConf.select(cfg, group)
        if node is None:
            settings[group] = "none"
            continue
        settings |= flatten(OmegaConf.to_container(node, resolve=True), group)
    return settings


def flatten(tree: dict, name: str) -> dict[str, bool | int | float | str]:
    """A config node as {"optimizer": "SGD", "optimizer.lr": 0.01, ...}: a `_target_` gives the
    node's value (its class name), lists become text, plumbing keys are left out."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in tree.items():
        if key in PLUMBING or value is None or (key == "_target_" and name == "data"):
            continue
        if key == "_target_":
            flat[name] = value.rsplit(".", 1)[-1]
        elif isinstance(value, dict):
            flat |= flatten(value, name if key == "schedule" else f"{name}.{key}")
        else:
            flat[f"{name}.{key}"] = (
                value if isinstance(value, (bool, int, float, str)) else str(value)
            )
    return flat


class CSVLogger(LightningCSVLogger):
    """Lightning's CSVLogger, with its `epoch` column counted from 1, as the console, the epoch
    table and the checkpoint names count epochs.

    Lightning adds its epoch counter to every value it logs: the epochs begun before the value's,
    from 0, while training; after it, for the test set, the epochs trained, which is the last
    one's number counted from 1 and stays as it is.
    """

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        tested = all(key.startswith("test/") for key in metrics if key != "epoch")
        if "epoch" in metrics and not tested:
            metrics = {**metrics, "epoch": metrics["epoch"] + 1}  # a copy: every logger gets them
        super().log_metrics(metrics, step)
