"""`hydra/launcher=population`: a sweep's jobs that can share a training loop train together.

Written against Hydra's public launcher API. The launcher loads every job's config as Hydra's own
launchers do, leaves the grouping and the training to src/population.py (imported only when a
sweep launches, so that Hydra's scan of its plugins stays fast), and returns one JobReturn per
job, in the sweep's order.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

log = logging.getLogger(__name__)


@dataclass
class PopulationLauncherConf:
    _target_: str = "hydra_plugins.population_launcher.population_launcher.PopulationLauncher"
    # Processes the sweep's populations and lone jobs are shared out among (joblib's loky
    # workers, as hydra/launcher=joblib starts them); 1: all in this one.
    n_jobs: int = 1


ConfigStore.instance().store(
    group="hydra/launcher", name="population", node=PopulationLauncherConf, provider="primer"
)


class PopulationLauncher(Launcher):
    """Trains each group of a sweep's jobs as one population, and the other jobs one by one."""

    def __init__(self, n_jobs: int = 1) -> None:
        from joblib import effective_n_jobs

        from src.errors import ConfigError

        if n_jobs == 0:
            raise ConfigError("hydra.launcher.n_jobs=0 would start no process: give 1 (this "
                              "one), 2 or more, or -1 (one per core), as for joblib")  # fmt: skip
        self.n_jobs = effective_n_jobs(n_jobs)  # joblib's reading: -1 is one per core

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:  # fmt: skip
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:  # fmt: skip
        from src.population import launch

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info("Launching %d jobs as populations", len(job_overrides))
        configs = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            sweep_config = self.hydra_context.config_loader.load_sweep_config(
                self.config, list(overrides)
            )
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = idx
                sweep_config.hydra.job.num = idx
            configs.append(sweep_config)
        runs = launch(configs, self.hydra_context, self.task_function, self.n_jobs)
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return runs
