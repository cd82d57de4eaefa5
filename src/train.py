"""Train one experiment and record what it learned: `python -m src.train +experiment=mnist_sgd`.

The flow reads top to bottom: seed, build data, model, callbacks, loggers and trainer from the
config, fit, test, then write `metrics.json` and the hyperparameters next to TensorBoard's curves.
"""

import json
import logging
import math
import pickle
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from src.config import InputError, register, validate

log = logging.getLogger(__name__)
register()

FINAL_METRICS = ("train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc")


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point: one run per call (a multirun calls it once per job)."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        validate(cfg)
        record = train(cfg, run_dir)
    except (InputError, InstantiationException) as err:
        # Bad input, not a failed run: say what to fix, leave no metrics.json behind.
        reason = err if isinstance(err, InputError) else err.__cause__
        if not isinstance(reason, InputError):
            raise
        log.error("%s", reason)
        sys.exit(2)
    if record["status"] != "completed":
        sys.exit(1)
    return record.get(cfg.get("optimized_metric"))


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Fit and test the configured model; write and return the run's `metrics.json` record."""
    # Imported here, not at the top: composing and checking the config needs none of them.
    import lightning as L
    from hydra.utils import instantiate

    from src.callbacks import EpochTable
    from src.modules import Diverged

    # `import lightning` adds a console handler of its own; Hydra's handlers already print its
    # messages and copy them into train.log, so drop it rather than print every line twice.
    logging.getLogger("lightning").handlers.clear()
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model, optimizer=instantiate(cfg.optimizer))
    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values()]
    loggers = [instantiate(lg) for lg in cfg.get("logger", {}).values()]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)

    status, error = "completed", None
    start = time.perf_counter()
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    except Diverged as err:
        status, error = "diverged", str(err)
    except pickle.UnpicklingError as err:
        # weights_only loading met something other than tensors and plain values: never run it.
        reason = str(err).strip().splitlines()[0]
        raise InputError(
            f"ckpt_path={cfg.ckpt_path} was refused by weights-only loading: {reason}"
        ) from None
    fit_seconds = time.perf_counter() - start
    metrics = read_metrics(trainer.callback_metrics)
    if status == "completed":
        trainer.test(model, datamodule=datamodule, verbose=False)
        metrics |= read_metrics(trainer.callback_metrics, prefix="test/")

    record = {
        **metrics,
        "seed": cfg.seed,
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "fit_seconds": round(fit_seconds, 3),
        "status": status,
    }
    if error:
        record["error"] = error
        log.error(error)
    if not trainer.is_global_zero:
        return record  # under DDP, rank 0 alone writes the run's files
    log_hparams(trainer, cfg, metrics)
    (run_dir / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")

    table = next((c for c in callbacks if isinstance(c, EpochTable)), None)
    if table is not None:
        log.info("results:\n%s", table.render(metrics))
    log.info("run directory: %s", run_dir)
    return record


def read_metrics(callback_metrics: dict, prefix: str = "") -> dict[str, float | None]:
    """The epoch-level values of FINAL_METRICS that the trainer holds; None where not finite."""
    values = {
        key: float(callback_metrics[key])
        for key in FINAL_METRICS
        if key.startswith(prefix) and key in callback_metrics
    }
    return {key: value if math.isfinite(value) else None for key, value in values.items()}


def log_hparams(trainer, cfg: DictConfig, metrics: dict[str, float]) -> None:
    """Write the flattened config to TensorBoard's HPARAMS tab, tied to the final metrics.

    The tab reads each metric's value from the scalar curve of the same tag, so the tags named here
    are the ones the run logged (a step-and-epoch metric's epoch curve carries `_epoch`).
    """
    from lightning.pytorch.loggers import TensorBoardLogger
    from torch.utils.tensorboard.summary import hparams

    params = flatten(OmegaConf.to_container(cfg, resolve=True))
    tags = {key + ("_epoch" if key.startswith("train/") else ""): v for key, v in metrics.items()}
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            writer = logger.experiment._get_file_writer()
            for summary in hparams(params, tags):
                writer.add_summary(summary)
            writer.flush()


def flatten(tree: dict, prefix: str = "") -> dict[str, float | int | str | bool]:
    """Nested config → {"optimizer.lr": 0.01, ...} with TensorBoard-friendly values."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


if __name__ == "__main__":
    main()
