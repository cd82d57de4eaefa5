"""A training run's record (its metrics.json) and what follows from it: the process's exit status,
the value an optimizing sweeper compares, a sweep's job left as it is or continued, and the one
line for a full disk or a refused start.

A single run exits non-zero when it does not complete. In a sweep a job never ends the sweep: its
failure is recorded in its metrics.json. A sweep's job is known by its settings (its directory is
named after them): run again with the same hydra.sweep.dir, a finished job is left as it is and
an unfinished one continues from its last checkpoint.
"""

import contextlib
import logging
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from src import sigterm
from src.errors import InputError
from src.names import CHECKPOINTS, FINAL_METRICS, LAST_CKPT, RECORD
from src.records import no_room, read_json, unwritten_file, write_json

log = logging.getLogger(__name__)

FINISHED = ("completed", "diverged")  # a sweep run again leaves these jobs as they are
EXIT_STATUS = {"completed": 0, "diverged": 1, "failed": 1, "interrupted": sigterm.EXIT_STATUS}


@dataclass
class Outcome:
    """How a run's fit and test ended: its status, why when it did not complete, and the
    checkpoint whose weights were tested (None: the final weights in memory)."""

    status: str
    error: str | None = None
    tested: Path | None = None


def sweep_reuse(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> dict | None:
    """A sweep's job run again: its record when it finished with these settings, to be left as it
    is; else None, with `cfg.ckpt_path` set to its last checkpoint when it left one."""
    previous = read_json(run_dir / RECORD) or {}
    if previous.get("status") in FINISHED and previous.get("overrides") == overrides:
        log.info("%s finished earlier (%s): left as it is", run_dir, previous["status"])
        return previous
    if (run_dir / LAST_CKPT).is_file() and not cfg.ckpt_path:
        cfg.ckpt_path = str(run_dir / LAST_CKPT)
        log.info("continuing an unfinished job from %s", cfg.ckpt_path)
    return None


def failed(err: Exception, cfg: DictConfig, run_dir: Path, overrides: list[str],
           in_sweep: bool) -> dict:  # fmt: skip
    """The record of a run that raised `err`, written; a full disk, and bad input to a single run,
    exit with one line instead."""
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
    write_json(run_dir / RECORD, record)
    if in_sweep:
        log.error("job failed: %s", record["error"])
    return record


def result(record: dict, cfg: DictConfig, in_sweep: bool) -> float:
    """What a run returns to Hydra, its objective; a single run that did not complete exits with
    its status instead."""
    if not in_sweep and record["status"] != "completed":
        sys.exit(EXIT_STATUS[record["status"]])
    return objective(record, cfg)


def remove_refused(run_dir: Path) -> None:
    """Remove the directory of a run refused before it began, if it holds only what Hydra wrote
    before the refusal (.hydra/, train.log): nothing in outputs/ looks like a run that was."""
    # The other ranks of a torchrun leave their logs too (src/ranks.py); Lightning opens each
    # logger before it reads the data, so an unreadable dataset leaves an empty event file.
    written = {p.name for p in run_dir.iterdir()
               if not p.match("train_ddp_process_*.log") and not empty_events(p)}  # fmt: skip
    if written <= {".hydra", "train.log"}:
        shutil.rmtree(run_dir)
        with contextlib.suppress(OSError):  # the day's folder, if this was its only run
            run_dir.parent.rmdir()


def empty_events(path: Path) -> bool:
    """Whether `path` is a TensorBoard event file holding nothing but its header."""
    if not path.name.startswith("events.out.tfevents.") or not path.is_file():
        return False
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    return all(event.HasField("file_version") for event in EventFileLoader(str(path)).Load())


def no_room_message(err: OSError, run_dir: Path) -> str:
    """What to do when the disk is full: which checkpoint, if any, to resume from."""
    saved = sorted((run_dir / CHECKPOINTS).glob("*.ckpt"), key=lambda p: p.name != LAST_CKPT.name)
    then = f"resume with ckpt_path={saved[0]}" if saved else "run it again"
    file = unwritten_file(err, run_dir)
    where = file if file else f"in {run_dir}"
    return f"no room to write {where} ({err.strerror}): free some space, then {then}"


def quiet_when_no_room(hook):
    """A threading.excepthook that leaves a full disk to the main thread to report."""

    def excepthook(args) -> None:
        if no_room(args.exc_value) is None:
            hook(args)

    return excepthook


def objective(record: dict, cfg: DictConfig) -> float:
    """What an optimizing sweeper (Optuna) compares: the experiment's metric; NaN when missing."""
    value = record.get(cfg.monitor.metric)
    return float("nan") if value is None else value


def read_metrics(source: dict, prefix: str = "") -> dict[str, float | None]:
    """The values of FINAL_METRICS found in `source`, as floats; None where not finite."""
    values = {
        key: float(source[key]) for key in FINAL_METRICS if key.startswith(prefix) and key in source
    }
    return {key: value if math.isfinite(value) else None for key, value in values.items()}


def fit_metrics(trainer, model) -> dict[str, float | None]:
    """The final metrics of the fit, and the loss before its first optimizer step."""
    # The table's last row covers a run resumed from its final checkpoint, where fit has no
    # epoch left to run and so logs nothing.
    table = epoch_table(trainer)
    last_epoch = table.rows[-1] if table and table.rows else {}
    metrics = read_metrics({**last_epoch, **trainer.callback_metrics})
    # The loss before the first optimizer step (src/modules/supervised.py); a resumed run has it
    # from its checkpoint.
    first_loss = getattr(model, "first_loss", None)
    if first_loss is not None:
        metrics["first_loss"] = first_loss if math.isfinite(first_loss) else None
    return metrics


def epoch_table(trainer):
    """The run's EpochTable callback, or None when the config has none."""
    from src.callbacks import EpochTable

    return next((c for c in trainer.callbacks if isinstance(c, EpochTable)), None)


def run_record(cfg: DictConfig, run_dir: Path, trainer, model, metrics: dict, outcome: Outcome,
               fit_seconds: float) -> dict:  # fmt: skip
    """The run's metrics.json record, but for what the run adds of its own (lr_find, a resume) and
    the settings; `fit_seconds` of this fit alone."""
    table = epoch_table(trainer)
    earlier = table.earlier_fit_seconds if table else 0.0  # the fits this one resumed
    if outcome.status == "completed":
        metrics = {**metrics, **read_metrics(trainer.callback_metrics, prefix="test/")}
    record = {
        **metrics,
        "seed": cfg.seed,
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "fit_seconds": round(earlier + fit_seconds, 3),
        **({"train_seconds": round(table.train_seconds, 3)} if table else {}),
        "status": outcome.status,
        # Lightning's fast_dev_run (+debug=fdr) checks the code on one batch: no real result.
        **({"fast_dev_run": True} if trainer.fast_dev_run else {}),
    }
    if outcome.error:
        record["error"] = outcome.error
        (log.warning if outcome.status == "interrupted" else log.error)(outcome.error)
    if outcome.status == "completed":
        tested = outcome.tested
        record["tested"] = str(tested.relative_to(run_dir)) if tested else "final weights in memory"
    if (run_dir / LAST_CKPT).is_file():
        record["checkpoint"] = str(LAST_CKPT)  # to resume from
    return record


def write_record(cfg: DictConfig, run_dir: Path, overrides: list[str], trainer,
                 record: dict) -> dict:  # fmt: skip
    """Finish `record` with the monitor, the overrides and (on rank 0) the settings; write it as
    metrics.json, say the results, and return it."""
    record |= {"monitor": OmegaConf.to_container(cfg.monitor), "overrides": overrides}
    if not trainer.is_global_zero:
        return record  # under DDP, rank 0 alone writes the run's files
    record["settings"] = log_settings(trainer, cfg)
    write_json(run_dir / RECORD, record)
    table = epoch_table(trainer)
    if table is not None:
        log.info("results:\n%s", table.render(record))  # its test metrics
    last_ckpt = run_dir / LAST_CKPT
    if record["status"] == "interrupted":
        then = f"resume with ckpt_path={last_ckpt}" if last_ckpt.is_file() else "run it again"
        log.info("%s", then)
    log.info("run directory: %s", run_dir)
    return record


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
