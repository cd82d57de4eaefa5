"""Train one experiment and record what it learned: `python -m src.train +experiment=mnist_sgd`.

The flow reads top to bottom: check the config, seed, build data, model, callbacks, loggers and
trainer from it, fit, test the last checkpoint, then write `metrics.json` and the hyperparameters
next to TensorBoard's curves.
"""

import contextlib
import gc
import logging
import math
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from src import sigterm
from src.command_line import CONF, console_script, run_command_line
from src.config import register, validate
from src.console import quiet_console
from src.errors import ConfigError, InputError
from src.ranks import in_sweep_job, sweep_job
from src.records import no_room, read_json, unwritten_file, write_json
from src.resume import resume_changes, sole_writer

log = logging.getLogger(__name__)
register()

FINAL_METRICS = ("train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc",
                 "test/ece")  # fmt: skip
FINISHED = ("completed", "diverged")  # a sweep run again leaves these jobs as they are
EXIT_STATUS = {"completed": 0, "diverged": 1, "failed": 1, "interrupted": sigterm.EXIT_STATUS}


@hydra.main(config_path=str(CONF), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Hydra entry point: one run per call (a multirun calls it once per job).

    A single run exits non-zero when it does not complete. In a sweep a job never ends the
    sweep: its failure is recorded in its metrics.json; a SIGTERM does, after the running job
    (src/sweep.py). A sweep's job is known by its settings (its directory is named after them):
    run again with the same hydra.sweep.dir, a finished job is left as it is and an unfinished
    one continues from its last checkpoint. One process at a time writes a run's directory.
    """
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    # A rank Lightning started for a sweep's job ends as the job does, recorded by its first rank.
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN or in_sweep_job()
    sigterm.listen()  # a sweep listens from its start (src/sweep.py)
    if in_sweep and sigterm.received():
        log.warning("%s not started: the sweep was stopped by SIGTERM", run_dir)
        return math.nan
    with sole_writer(run_dir) as held:
        if held:
            return run(cfg, run_dir, overrides, in_sweep)
    if in_sweep:
        log.warning("%s is being trained by another process: skipped here", run_dir)
        return math.nan
    log.error("hydra.run.dir=%s is being written by another process: let it end, or give another "
              "directory", run_dir)  # fmt: skip
    sys.exit(2)


def run(cfg: DictConfig, run_dir: Path, overrides: list[str], in_sweep: bool) -> float:
    """One run in a directory this process holds: a sweep's finished job is left as it is, an
    unfinished one continues from its last checkpoint."""
    if in_sweep:
        previous = read_json(run_dir / "metrics.json") or {}
        if previous.get("status") in FINISHED and previous.get("overrides") == overrides:
            log.info("%s finished earlier (%s): left as it is", run_dir, previous["status"])
            return objective(previous, cfg)
        if (run_dir / "checkpoints" / "last.ckpt").is_file() and not cfg.ckpt_path:
            cfg.ckpt_path = str(run_dir / "checkpoints" / "last.ckpt")
            log.info("continuing an unfinished job from %s", cfg.ckpt_path)
    # A sweep's job is the first rank of the DDP ranks it may start: they get this job alone.
    launcher = HydraConfig.get().mode == RunMode.MULTIRUN
    job = sweep_job(run_dir, cfg.ckpt_path) if launcher else contextlib.nullcontext()
    try:
        validate(cfg)
        with job:
            record = train(cfg, run_dir, overrides)
    except Exception as err:
        reason = err.__cause__ if isinstance(err, InstantiationException) else err
        full = no_room(reason)
        if full is not None:  # nothing more can be written: say so once, keep what is there
            log.error("%s", no_room_message(full, run_dir))
            sys.exit(2)
        if isinstance(reason, InputError) and not in_sweep:
            # Bad input, not a failed run: say what to fix, and leave no run behind.
            log.error("%s", reason)
            remove_refused(run_dir)
            sys.exit(2)
        record = {"status": "failed", "error": f"{type(reason).__name__}: {reason}",
                  "seed": cfg.seed, "overrides": overrides}  # fmt: skip
        write_json(run_dir / "metrics.json", record)
        if not in_sweep:
            raise
        log.error("job failed: %s", record["error"])
    if not in_sweep and record["status"] != "completed":
        sys.exit(EXIT_STATUS[record["status"]])
    return objective(record, cfg)


def remove_refused(run_dir: Path) -> None:
    """Remove the directory of a run refused before it began, if it holds only what Hydra wrote
    before the refusal (.hydra/, train.log): nothing in outputs/ looks like a run that was."""
    # The other ranks of a torchrun leave their logs too (src/ranks.py).
    written = {p.name for p in run_dir.iterdir() if not p.match("train_ddp_process_*.log")}
    if written <= {".hydra", "train.log"}:
        shutil.rmtree(run_dir)
        with contextlib.suppress(OSError):  # the day's folder, if this was its only run
            run_dir.parent.rmdir()


def no_room_message(err: OSError, run_dir: Path) -> str:
    """What to do when the disk is full: which checkpoint, if any, to resume from."""
    saved = sorted((run_dir / "checkpoints").glob("*.ckpt"), key=lambda p: p.name != "last.ckpt")
    then = f"resume with ckpt_path={saved[0]}" if saved else "run it again"
    file = unwritten_file(err, run_dir)
    where = file if file else f"in {run_dir}"
    return f"no room to write {where} ({err.strerror}): free some space, then {then}"


def objective(record: dict, cfg: DictConfig) -> float:
    """What an optimizing sweeper (Optuna) compares: the experiment's metric; NaN when missing."""
    value = record.get(cfg.monitor.metric)
    return float("nan") if value is None else value


def train(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> dict:
    """Fit and test the configured model; write and return the run's `metrics.json` record."""
    load_training_stack()
    import lightning as L
    import torch
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from src.callbacks import (
        ConfigInCheckpoints,
        EpochTable,
        ResumedSettings,
        StopTogether,
        stop_asked,
    )
    from src.checkpoints import check_weights_fit, read_checkpoint, stored_config
    from src.lr_finder import find_learning_rate
    from src.modules import Diverged

    quiet_console()
    # TensorBoard writes from a thread of its own; a full disk is reported by the main thread at
    # its next write, once, not also as that thread's traceback.
    threading.excepthook = quiet_when_no_room(threading.excepthook)
    ckpt = Path(cfg.ckpt_path) if cfg.get("ckpt_path") else None
    checkpoint = read_checkpoint(ckpt) if ckpt else None
    # The config it keeps is only compared with this run's, as written: never resolved, never built.
    changes = resume_changes(cfg, stored_config(checkpoint, ckpt), ckpt) if checkpoint else None
    if changes:
        listed = ", ".join(f"{key}: {then} → {now}" for key, (then, now) in changes.items())
        log.info("resuming with changed settings: %s", listed)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    L.seed_everything(cfg.seed, workers=True)
    datamodule, model, trainer = build(cfg)
    if checkpoint:
        check_weights_fit(checkpoint, model, ckpt)  # a network it does not fit: one line
    # Before the run's own callbacks see anything; a resumed run has its learning rate already.
    finding = cfg.lr_find and not checkpoint
    suggestion = find_learning_rate(cfg, model, datamodule, run_dir) if finding else None
    trainer.callbacks.append(ConfigInCheckpoints(OmegaConf.to_container(cfg, resolve=False)))
    trainer.callbacks.append(StopTogether())  # under DDP, a SIGTERM to one rank stops all
    if changes:
        trainer.callbacks.append(ResumedSettings(changes))

    status, error = "completed", None
    start = time.perf_counter()
    try:
        if sigterm.received():  # while it was being set up
            status, error = "interrupted", "stopped by SIGTERM before training"
        else:
            trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"),
                        weights_only=True)  # fmt: skip
    except Diverged as err:
        status, error = "diverged", str(err)
    except SystemExit as err:  # Lightning's way out of fit on SIGTERM (and on Ctrl-C)
        stop = "SIGTERM" if isinstance(err, SIGTERMException) else "Ctrl-C"
        status, error = "interrupted", f"stopped by {stop} at step {trainer.global_step}"
    except MisconfigurationException as err:  # a setting Lightning refuses, e.g. a missing GPU
        raise InputError(str(err).strip().splitlines()[0]) from None
    table = next((c for c in trainer.callbacks if isinstance(c, EpochTable)), None)
    earlier = table.earlier_fit_seconds if table else 0.0  # the fits this one resumed
    fit_seconds = earlier + time.perf_counter() - start
    # The table's last row covers a run resumed from its final checkpoint, where fit has no
    # epoch left to run and so logs nothing.
    last_epoch = table.rows[-1] if table and table.rows else {}
    metrics = read_metrics({**last_epoch, **trainer.callback_metrics})
    # The loss before the first optimizer step (src/modules/supervised.py); a resumed run has it
    # from its checkpoint.
    first_loss = getattr(model, "first_loss", None)
    if first_loss is not None:
        metrics["first_loss"] = first_loss if math.isfinite(first_loss) else None
    last_ckpt = run_dir / "checkpoints" / "last.ckpt"
    tested = None
    if status == "completed" and stop_asked(trainer):  # after fit's last check for one
        status, error = "interrupted", "stopped by SIGTERM before testing"
    if status == "completed":
        # The weights of a file that stays (the last epoch's): src.eval of it gives these numbers.
        tested = last_ckpt if last_ckpt.is_file() else None
        trainer.test(model, datamodule=datamodule, ckpt_path=tested, weights_only=True,
                     verbose=False)  # fmt: skip
        if stop_asked(trainer):  # Lightning's test loop runs on through a SIGTERM
            status, error = "interrupted", "stopped by SIGTERM while testing"
        else:
            metrics |= read_metrics(trainer.callback_metrics, prefix="test/")

    record = {
        **metrics,
        "seed": cfg.seed,
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "fit_seconds": round(fit_seconds, 3),
        **({"train_seconds": round(table.train_seconds, 3)} if table else {}),
        "status": status,
        # Lightning's fast_dev_run (+debug=fdr) checks the code on one batch: no real result.
        **({"fast_dev_run": True} if trainer.fast_dev_run else {}),
    }
    if error:
        record["error"] = error
        (log.warning if status == "interrupted" else log.error)(error)
    if status == "completed":
        record["tested"] = str(tested.relative_to(run_dir)) if tested else "final weights in memory"
    if last_ckpt.is_file():
        record["checkpoint"] = str(last_ckpt.relative_to(run_dir))  # to resume from
    if finding:
        record["lr_find"] = {"suggestion": suggestion, "plot": "lr_find.png"}
    if ckpt:
        record["resumed_from"] = str(ckpt)
        record["changed_on_resume"] = changes  # None: the checkpoint does not say its settings
    record |= {"monitor": OmegaConf.to_container(cfg.monitor), "overrides": overrides}
    if not trainer.is_global_zero:
        return record  # under DDP, rank 0 alone writes the run's files
    record["settings"] = log_settings(trainer, cfg)
    write_json(run_dir / "metrics.json", record)

    if table is not None:
        log.info("results:\n%s", table.render(metrics))
    if status == "interrupted":
        then = f"resume with ckpt_path={last_ckpt}" if last_ckpt.is_file() else "run it again"
        log.info("%s", then)
    log.info("run directory: %s", run_dir)
    return record


def build(cfg: DictConfig):
    """The datamodule, the module (with its optimizer and schedule) and the Trainer (with its
    callbacks and loggers) that the config describes."""
    from hydra.utils import instantiate
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.callbacks import ModelSummary, ProgressBar

    with refused_in_one_line("data", cfg.data):
        datamodule = instantiate(cfg.data)
    scheduler = instantiate(cfg.scheduler, _convert_="all") if cfg.scheduler else None
    # The network is what a user brings; the module around it takes only what its YAML gives.
    with refused_in_one_line("model.net", cfg.model.net):
        model = instantiate(cfg.model, optimizer=instantiate(cfg.optimizer), scheduler=scheduler)
    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values()]
    # No bar and no summary when the flags say so: Lightning refuses such a bar among the
    # callbacks, and would run such a summary.
    if cfg.trainer.enable_progress_bar is False:
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    if cfg.trainer.enable_model_summary is False:
        callbacks = [c for c in callbacks if not isinstance(c, ModelSummary)]
    try:
        loggers = [instantiate(lg) for lg in cfg.get("logger", {}).values()]
    except InstantiationException as err:
        # MLflow is an optional extra: Lightning's MLFlowLogger raises this when it is missing.
        if isinstance(err.__cause__, ModuleNotFoundError) and "mlflow" in str(err.__cause__):
            raise ConfigError("logger=mlflow needs MLflow: pip install -e .[mlflow]") from None
        raise
    try:
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    except InstantiationException as err:
        if isinstance(err.__cause__, MisconfigurationException):  # e.g. a GPU this machine lacks
            raise ConfigError(f"trainer: {str(err.__cause__).strip().splitlines()[0]}") from None
        raise
    check_torchrun(trainer)
    return datamodule, model, trainer


def check_torchrun(trainer) -> None:
    """Under torchrun, Lightning trains in the processes torchrun started (its TorchElastic
    environment): refuse a trainer that counts another number of them, before it fits."""
    started = os.environ.get("WORLD_SIZE") if os.environ.get("TORCHELASTIC_RUN_ID") else None
    asked = trainer.num_devices * trainer.num_nodes
    if started is not None and asked != int(started):
        raise ConfigError(
            f"torchrun runs {started} ranks, but trainer.devices={trainer.num_devices} times "
            f"trainer.num_nodes={trainer.num_nodes} make {asked}: give torchrun "
            "--nproc-per-node=<trainer.devices> and --nnodes=<trainer.num_nodes>"
        )


@contextlib.contextmanager
def refused_in_one_line(key: str, node: DictConfig):
    """Building the config's `key` (its `node`): a value its class refuses, as a TypeError from its
    __init__ (an argument it does not take) or a ValueError of its own (a network that does not fit
    the task, src/modules/supervised.py, is one), said in one line naming the key and the class."""
    try:
        yield
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, (TypeError, ValueError)):
            said = (str(cause).strip() or type(cause).__name__).splitlines()[0]
            raise ConfigError(f"{key} ({node.get('_target_')}): {said}") from None
        raise


def quiet_when_no_room(hook):
    """A threading.excepthook that leaves a full disk to the main thread to report."""

    def excepthook(args) -> None:
        if no_room(args.exc_value) is None:
            hook(args)

    return excepthook


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


def log_settings(trainer, cfg: DictConfig) -> dict:
    """The run's chosen settings for every logger (TensorBoard's HPARAMS tab, src/loggers.py;
    MLflow's params; the CSV logger's hparams.yaml); returned for the run's record."""
    from src.loggers import TensorBoardLogger, chosen_settings

    settings = chosen_settings(cfg)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_settings(settings)
        else:
            logger.log_hyperparams(settings)
            logger.save()
    return settings


cli = console_script(main)  # the console script primer-train (pyproject.toml)


if __name__ == "__main__":
    run_command_line(main)
