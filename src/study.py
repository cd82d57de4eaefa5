"""Optuna searches sharing one study: workers on one machine or many, one SQLite file.

Hydra's Optuna sweeper opens `hydra.sweeper.storage` and creates or loads the study
`hydra.sweeper.study_name` in it; each worker asks the storage for its next trial, so no trial
number is given twice, and TPE learns from every worker's results. Three things would go wrong
on their own, and `SharedStudy` sees to them:

- Optuna 2.10 creates a new SQLite file's tables and the study without a lock: workers started
  together fail ("table studies already exists"). Here one process at a time creates them,
  under an OS lock on `<file>.lock` beside the storage.
- Workers whose samplers share a seed draw the same trials. A seed is taken for the study once
  (kept in the study itself); a worker given one already taken is refused in one line.
- Each worker writes `optimization_results.yaml` when it ends, with the best trial it knew of
  then. Here, under the same lock, it is rewritten from the study: the best of every trial.

Optuna 2.10 (the newest Hydra's sweeper takes) keeps a study in a database through SQLAlchemy 1:
under SQLAlchemy 2 its schema version is never committed and no storage opens. That is refused
in one line too, saying what to install.
"""

import contextlib
import fcntl
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from src.records import write_text


class SharedStudy(Callback):
    """Hydra callback: before Optuna's sweeper opens a SQLite storage, create its study (one
    process at a time) and take this worker's sampler seed for it; when the search ends, report
    the study's best trial."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        storage = sqlite_storage(config)
        if storage is None:
            return
        sqlalchemy = version("SQLAlchemy")
        if version("optuna").startswith("2.") and not sqlalchemy.startswith("1."):
            refuse(config, f"hydra.sweeper.storage={storage} needs SQLAlchemy 1 with Optuna "
                           f"2.10, whose storage cannot record its schema under SQLAlchemy "
                           f"{sqlalchemy}: pip install -e .[optuna] installs it")  # fmt: skip
        import optuna

        sweeper = config.hydra.sweeper
        direction = sweeper.get("direction", "minimize")
        directions = list(direction) if isinstance(direction, ListConfig) else [direction]
        directions = [getattr(d, "name", str(d)) for d in directions]  # Hydra's enum, or a name
        name, seed = sweeper.get("study_name"), sweeper.get("sampler", {}).get("seed")
        with one_at_a_time(storage):
            if name is None:  # the sweeper makes a study of its own: only the tables are shared
                optuna.storages.RDBStorage(storage)
                return
            said = optuna.logging.get_verbosity()  # the sweeper says which study it opens
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            try:
                study = optuna.create_study(storage=storage, study_name=name, directions=directions,
                                            load_if_exists=True)  # fmt: skip
            finally:
                optuna.logging.set_verbosity(said)
            if seed is None:
                return  # a sampler seeded afresh each time draws its own trials
            seeds = study.user_attrs.get("sampler_seeds", [])
            if seed in seeds:
                refuse(config, f"hydra.sweeper.sampler.seed={seed} is taken in study {name} of "
                               f"{storage} (by another worker, or an earlier search), whose "
                               "trials this one would draw again: give each worker a seed of "
                               "its own, or null")  # fmt: skip
            study.set_user_attr("sampler_seeds", [*seeds, seed])

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        storage, name = sqlite_storage(config), config.hydra.sweeper.get("study_name")
        if storage is None or name is None:
            return
        import optuna

        with one_at_a_time(storage):
            study = optuna.load_study(study_name=name, storage=storage)
            done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
            if not done or len(study.directions) > 1:
                return  # nothing to report, or the sweeper's Pareto front, left as it wrote it
            best = study.best_trial
            report = {"name": "optuna", "best_params": best.params, "best_value": best.value,
                      "best_trial": best.number, "trials": len(done)}  # fmt: skip
            path = Path(config.hydra.sweep.dir) / "optimization_results.yaml"
            write_text(path, OmegaConf.to_yaml(OmegaConf.create(report)))


def refuse(config: DictConfig, reason: str) -> None:
    """Say in one line why the search cannot start, and leave no empty sweep directory."""
    print(f"error: {reason}", file=sys.stderr)
    with contextlib.suppress(OSError):  # it holds other searches' jobs
        Path(config.hydra.sweep.dir).rmdir()
    sys.exit(2)


def sqlite_storage(config: DictConfig) -> str | None:
    """The search's storage URL, when it is a SQLite file (not a database server's)."""
    storage = config.hydra.sweeper.get("storage")
    return str(storage) if storage and str(storage).startswith("sqlite:///") else None


@contextmanager
def one_at_a_time(storage: str) -> Iterator[None]:
    """Hold the OS lock on `<file>.lock` beside a SQLite storage (released however this process
    ends)."""
    database = Path(storage.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(f"{database.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
