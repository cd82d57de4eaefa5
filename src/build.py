"""A run's parts, built from its config: the datamodule, the module with its optimizer and
schedule, and the Trainer with its callbacks and loggers, seeded as the run's seed says.
src.train builds a run with them, the population launcher each of its members."""

import gc
import logging
import os
import sys

from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from src.config import refused_in_one_line
from src.console import held_back
from src.errors import ConfigError

log = logging.getLogger(__name__)


def build_run(cfg: DictConfig):
    """The datamodule, module and Trainer of a run, built from its seed on; the Trainer's
    callbacks end with those every run has (its config in each checkpoint, a SIGTERM to one rank
    stopping all)."""
    import lightning as L
    import torch

    from src.callbacks import ConfigInCheckpoints, StopTogether

    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    # Said once the parts are built: a wrong value among them is then the run's only line.
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, model, trainer = build(cfg)
    log.info("Seed set to %d", cfg.seed)
    trainer.callbacks.append(ConfigInCheckpoints(OmegaConf.to_container(cfg, resolve=False)))
    trainer.callbacks.append(StopTogether())
    return datamodule, model, trainer


def build(cfg: DictConfig):
    """The datamodule, the module (with its optimizer and schedule) and the Trainer (with its
    callbacks and loggers) that the config describes."""
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ModelSummary, ProgressBar

    with refused_in_one_line("data", cfg.data):
        datamodule = instantiate(cfg.data)
    scheduler = instantiate(cfg.scheduler, _convert_="all") if cfg.scheduler else None
    # The network is what a user brings; the module around it takes only what its YAML gives.
    with refused_in_one_line("model.net", cfg.model.net):
        model = instantiate(cfg.model, optimizer=instantiate(cfg.optimizer), scheduler=scheduler)
    callbacks = []
    for name, node in cfg.get("callbacks", {}).items():
        with refused_in_one_line(f"callbacks.{name}", node):
            callbacks.append(instantiate(node))
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
    trainer = build_trainer(cfg.trainer, callbacks=callbacks, logger=loggers)
    check_torchrun(trainer)
    return datamodule, model, trainer


def build_trainer(node: DictConfig, **given):
    """Lightning's Trainer from the config's `trainer` node and the arguments `given`. The ranges
    are its own checks: a value it refuses, a GPU this machine lacks, an accelerator's missing
    package is one line naming the key, without the notes it logs as it starts."""
    from hydra.utils import instantiate
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    refusals = (MisconfigurationException, ImportError)
    with held_back(), refused_in_one_line("trainer", node, name_the_key=True, also=refusals):
        return instantiate(node, **given)


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
