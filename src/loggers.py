"""TensorBoard as this project's runs read best: train and val of a quantity on one chart, the
settings a person compares in HPARAMS, and no section of its own for Lightning's epoch counter."""

import time

from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger
from omegaconf import DictConfig, OmegaConf
from tensorboard.plugins.hparams import summary_v2
from torch.utils.tensorboard.writer import FileWriter

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
    "frequency", "name",
}  # fmt: skip


class TensorBoardLogger(LightningTensorBoardLogger):
    """Lightning's TensorBoardLogger, plus a CUSTOM SCALARS layout written with the run's first
    values, Lightning's `epoch` value kept under `train/epoch`, and `log_settings` for HPARAMS."""

    layout_written = False

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        if not self.layout_written:
            self.experiment.add_custom_scalars(LAYOUT)
            self.layout_written = True
        if "epoch" in metrics:  # Lightning adds it to every epoch-level value it logs
            metrics = {("train/epoch" if k == "epoch" else k): v for k, v in metrics.items()}
        super().log_metrics(metrics, step)

    def log_settings(self, settings: dict) -> None:
        """The run's chosen settings in the HPARAMS tab, beside its final metrics.

        Only the run's own session is written, no experiment summary: TensorBoard then takes the
        columns from every run's settings, where the first experiment summary found would decide
        them for all runs in the folder. The metric columns are the run's scalar tags.
        """
        # TensorBoard knows one number type and prints it with decimals (64.000): a count reads
        # right as text.
        settings = {key: str(value) if isinstance(value, int) and not isinstance(value, bool)
                    else value for key, value in settings.items()}  # fmt: skip
        # An event file of its own beside the run's, whose writer Lightning has closed by now.
        writer = FileWriter(self.log_dir)
        writer.add_summary(summary_v2.hparams_pb(settings, start_time_secs=time.time()))
        writer.close()


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
