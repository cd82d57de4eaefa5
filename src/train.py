"""Train one experiment and record what it learned: `python -m src.train +experiment=mnist_sgd`.

The flow reads top to bottom: check the config, build the run's parts from it from its seed on
(src/build.py), fit, test the last checkpoint, then write `metrics.json` and the hyperparameters
next to TensorBoard's curves (src/run_record.py).
"""

import contextlib
import logging
import math
import sys
import threading
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from src import sigterm
from src.build import build_run, load_training_stack
from src.command_line import CONF, console_script, run_command_line
from src.config import register, validate
from src.console import quiet_console
from src.errors import InputError
from src.names import LAST_CKPT, LR_FIND_PLOT
from src.ranks import in_sweep_job, sweep_job
from src.run_dirs import sole_writer
from src.run_record import (
    Outcome,
    failed,
    fit_metrics,
    objective,
    quiet_when_no_room,
    result,
    run_record,
    sweep_reuse,
    write_record,
)

log = logging.getLogger(__name__)
register()


@hydra.main(config_path=str(CONF), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    """Hydra entry point: one run per call (a multirun calls it once per job).

    What a run's end means for the process and for a sweep run again is src/run_record.py's; a
    SIGTERM ends a sweep after the running job (src/sweep.py). One process at a time writes a
    run's directory.
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
    earlier = sweep_reuse(cfg, run_dir, overrides) if in_sweep else None
    if earlier is not None:
        return objective(earlier, cfg)
    # A sweep's job is the first rank of the DDP ranks it may start: they get this job alone.
    launcher = HydraConfig.get().mode == RunMode.MULTIRUN
    job = sweep_job(run_dir, cfg.ckpt_path) if launcher else contextlib.nullcontext()
    try:
        validate(cfg)
        with job:
            record = train(cfg, run_dir, overrides)
    except Exception as err:
        record = failed(err, cfg, run_dir, overrides, in_sweep)  # or exits, on bad input
        if not in_sweep:
            raise
    return result(record, cfg, in_sweep)


def train(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> dict:
    """Fit and test the configured model; write and return the run's `metrics.json` record."""
    load_training_stack()
    from src.callbacks import ResumedSettings
    from src.checkpoints import check_weights_fit, hand_over, resume_from
    from src.lr_finder import find_learning_rate

    quiet_console()
    # TensorBoard writes from a thread of its own; a full disk is reported by the main thread at
    # its next write, once, not also as that thread's traceback.
    threading.excepthook = quiet_when_no_room(threading.excepthook)
    resume = resume_from(cfg)  # None: a new run
    datamodule, model, trainer = build_run(cfg)
    if resume:
        check_weights_fit(resume.checkpoint, model, resume.path)  # another network's: one line
        hand_over(resume, trainer)
        if resume.changes:
            trainer.callbacks.append(ResumedSettings(resume.changes))
    # A resumed run has its learning rate already.
    finding = cfg.lr_find and not resume
    suggestion = find_learning_rate(cfg, model, datamodule, run_dir) if finding else None
    start = time.perf_counter()
    outcome = fit(trainer, model, datamodule, cfg.get("ckpt_path"))
    fit_seconds = time.perf_counter() - start
    metrics = fit_metrics(trainer, model)
    if outcome.status == "completed":
        last_ckpt = run_dir / LAST_CKPT
        outcome = test(trainer, model, datamodule, last_ckpt if last_ckpt.is_file() else None)
    record = run_record(cfg, run_dir, trainer, model, metrics, outcome, fit_seconds)
    if finding:
        record["lr_find"] = {"suggestion": suggestion, "plot": LR_FIND_PLOT}
    if resume:
        record |= {"resumed_from": str(resume.path), "changed_on_resume": resume.changes}
    return write_record(cfg, run_dir, overrides, trainer, record)


def fit(trainer, model, datamodule, ckpt_path: str | None) -> Outcome:
    """Lightning's fit, resumed from `ckpt_path` if given; how it ended."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from src.modules import Diverged

    if sigterm.received():  # while it was being set up
        return Outcome("interrupted", "stopped by SIGTERM before training")
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except Diverged as err:
        return Outcome("diverged", str(err))
    except SystemExit as err:  # Lightning's way out of fit on SIGTERM (and on Ctrl-C)
        stop = "SIGTERM" if isinstance(err, SIGTERMException) else "Ctrl-C"
        return Outcome("interrupted", f"stopped by {stop} at step {trainer.global_step}")
    except MisconfigurationException as err:  # a setting Lightning refuses, e.g. a missing GPU
        raise InputError(str(err).strip().splitlines()[0]) from None
    return Outcome("completed")


def test(trainer, model, datamodule, tested: Path | None) -> Outcome:
    """Test a completed fit's last weights, those of a file that stays (`tested`, the last epoch's
    checkpoint; None: the weights in memory): src.eval of it gives these numbers. How it ended."""
    from src.callbacks import stop_asked

    if stop_asked(trainer):  # after fit's last check for one
        return Outcome("interrupted", "stopped by SIGTERM before testing")
    trainer.test(model, datamodule=datamodule, ckpt_path=tested, weights_only=True, verbose=False)
    if stop_asked(trainer):  # Lightning's test loop runs on through a SIGTERM
        return Outcome("interrupted", "stopped by SIGTERM while testing")
    return Outcome("completed", tested=tested)


cli = console_script(main)  # the console script primer-train (pyproject.toml)


if __name__ == "__main__":
    run_command_line(main)
