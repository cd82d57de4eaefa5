"""Train one experiment and record what it learned: `python -m src.train +experiment=mnist_sgd`.

The flow reads top to bottom: seed, build data, model, callbacks, loggers and trainer from the
config, fit, test, then write `metrics.json` and the hyperparameters next to TensorBoard's curves.
"""

import gc
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
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from src.config import register, validate
from src.errors import ConfigError, InputError

log = logging.getLogger(__name__)
register()

FINAL_METRICS = ("train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc")


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point: one run per call (a multirun calls it once per job).

    A single run exits non-zero when it does not complete. In a sweep a job never ends the
    sweep: its failure is recorded in its metrics.json, and a job that already finished (a sweep
    run again with the same hydra.sweep.dir) is left as it is.
    """
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    if in_sweep:
        previous = read_record(run_dir)
        if previous.get("status") in ("completed", "diverged"):
            log.info("%s finished earlier (%s): left as it is", run_dir, previous["status"])
            return objective(previous, cfg)
        if (run_dir / "checkpoints" / "last.ckpt").is_file() and not cfg.ckpt_path:
            cfg.ckpt_path = str(run_dir / "checkpoints" / "last.ckpt")
            log.info("continuing an unfinished job from %s", cfg.ckpt_path)
    try:
        validate(cfg)
        record = train(cfg, run_dir)
    except Exception as err:
        reason = err.__cause__ if isinstance(err, InstantiationException) else err
        if isinstance(reason, InputError) and not in_sweep:
            # Bad input, not a failed run: say what to fix, leave no metrics.json behind.
            log.error("%s", reason)
            sys.exit(2)
        record = {
            "status": "failed",
            "error": f"{type(reason).__name__}: {reason}",
            "seed": cfg.seed,
        }
        write_record(run_dir, record)
        if not in_sweep:
            raise
        log.error("job failed: %s", record["error"])
    if record["status"] != "completed" and not in_sweep:
        sys.exit(1)
    return objective(record, cfg)


def objective(record: dict, cfg: DictConfig) -> float:
    """What an optimizing sweeper (Optuna) compares: the experiment's metric; NaN when missing."""
    value = record.get(cfg.monitor.metric)
    return float("nan") if value is None else value


def read_record(run_dir: Path) -> dict:
    """The run's metrics.json, or {} when it has none (yet)."""
    path = run_dir / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def write_record(run_dir: Path, record: dict) -> None:
    (run_dir / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Fit and test the configured model; write and return the run's `metrics.json` record."""
    load_training_stack()
    import lightning as L
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ProgressBar

    from src.callbacks import EpochTable
    from src.modules import Diverged, NetworkMismatch

    # `import lightning` adds a console handler of its own; Hydra's handlers already print its
    # messages and copy them into train.log, so drop it rather than print every line twice.
    logging.getLogger("lightning").handlers.clear()
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    scheduler = instantiate(cfg.scheduler, _convert_="all") if cfg.scheduler else None
    try:
        model = instantiate(cfg.model, optimizer=instantiate(cfg.optimizer), scheduler=scheduler)
    except InstantiationException as err:
        if isinstance(err.__cause__, NetworkMismatch):
            raise ConfigError(f"model.net ({cfg.model.net._target_}): {err.__cause__}") from None
        raise
    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values()]
    if cfg.trainer.enable_progress_bar is False:
        # No bar, as the flag says: Lightning refuses one among the callbacks then.
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
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
    table = next((c for c in callbacks if isinstance(c, EpochTable)), None)
    # The table's last row covers a run resumed from its final checkpoint, where fit has no
    # epoch left to run and so logs nothing.
    last_epoch = table.rows[-1] if table and table.rows else {}
    metrics = read_metrics({**last_epoch, **trainer.callback_metrics})
    if status == "completed":
        trainer.test(model, datamodule=datamodule, verbose=False)
        metrics |= read_metrics(trainer.callback_metrics, prefix="test/")

    record = {
        **metrics,
        "seed": cfg.seed,
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "fit_seconds": round(fit_seconds, 3),
        **({"train_seconds": round(table.train_seconds, 3)} if table else {}),
        "status": status,
    }
    if error:
        record["error"] = error
        log.error(error)
    if not trainer.is_global_zero:
        return record  # under DDP, rank 0 alone writes the run's files
    log_hparams(trainer, cfg, metrics)
    write_record(run_dir, record)

    if table is not None:
        log.info("results:\n%s", table.render(metrics))
    log.info("run directory: %s", run_dir)
    return record


def load_training_stack() -> None:
    """Import Lightning and the project's modules, for a run that passed the config checks
    (composing and checking a config needs none of them).

    The imports leave about half a million objects that live as long as the process. Python's
    collector would scan all of them at each full collection, seven times during the imports
    alone (~0.7 s) and again at exit, without ever freeing one: they are frozen out of its sight.
    """
    if "lightning" in sys.modules:  # a sweep's later jobs
        return
    gc.disable()
    try:
        import lightning  # noqa: F401

        import src.callbacks  # noqa: F401
        import src.data  # noqa: F401
        import src.modules  # noqa: F401
    finally:
        gc.freeze()
        gc.enable()


def read_metrics(source: dict, prefix: str = "") -> dict[str, float | None]:
    """The values of FINAL_METRICS found in `source`, as floats; None where not finite."""
    values = {
        key: float(source[key]) for key in FINAL_METRICS if key.startswith(prefix) and key in source
    }
    return {key: value if math.isfinite(value) else None for key, value in values.items()}


def log_hparams(trainer, cfg: DictConfig, metrics: dict[str, float]) -> None:
    """Write the flattened config to TensorBoard's HPARAMS tab, tied to the final metrics.

    The tab reads each metric's value from the scalar curve of the same tag: the metric names are
    the tags the run logged its epoch values under.
    """
    from lightning.pytorch.loggers import TensorBoardLogger
    from torch.utils.tensorboard.summary import hparams
    from torch.utils.tensorboard.writer import FileWriter

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            params = flatten(OmegaConf.to_container(cfg, resolve=True))
            # An event file of its own beside the run's: the logger's writer is closed by now.
            writer = FileWriter(logger.log_dir)
            for summary in hparams(params, metrics):
                writer.add_summary(summary)
            writer.close()


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
