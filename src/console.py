"""What the console shows of the libraries a run uses: one place decides what is noise, for
every entry point (src.train, src.eval, src.predict, src.report, src.sweep)."""

import contextlib
import functools
import logging
import warnings


def quiet_console() -> None:
    """Leave out of the console (and train.log) what tells a user nothing about their run; each
    was checked not to apply here.

    Every entry point calls it as it starts, before Hydra sets anything up (an Optuna sweeper's
    imports log as Hydra loads it), and again once it has imported Lightning; the filters are
    set on the first call, and nothing here imports a library.
    """
    set_filters()
    # `import lightning` adds a console handler of its own; Hydra's handlers already print its
    # messages and copy them into train.log, so drop it rather than print every line twice.
    lightning = logging.getLogger("lightning")
    for handler in list(lightning.handlers):
        lightning.removeHandler(handler)


@contextlib.contextmanager
def held_back(name: str = "lightning.pytorch.utilities.rank_zero"):
    """Hold back what the logger `name` says (Lightning's notes as its Trainer starts: GPU
    available, ...) until the block ends: said then if it ended well, dropped if it raised, so
    that a value the block refuses is the only line."""
    logger, held = logging.getLogger(name), []
    hold = held.append  # as a filter: keeps each record here, lets none through (None)
    logger.addFilter(hold)
    try:
        yield
    finally:
        logger.removeFilter(hold)
    for record in held:
        logger.handle(record)


@functools.cache  # once per process: a sweep's jobs share them
def set_filters() -> None:
    # An advertisement for a cloud logger at every start; the loggers a run uses are in logger/.
    # And a note that the run's own ModelSummary (conf/callbacks/) replaces Lightning's default.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: (
            "litlogger" not in record.getMessage()
            and "Skipping setting a default `ModelSummary`" not in record.getMessage()
        )
    )
    # Lightning's own code (utilities/_pytree.py) asks torch about a tree spec in a way torch
    # deprecates; no setting of a run reaches it, and Lightning's next release changes it.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # Said whenever Lightning saves a checkpoint without being told what to keep (Tuner.lr_find
    # does): it is about saving the whole state, as every checkpoint here does, not about how
    # checkpoints are loaded, which is always weights-only here (src/checkpoints.py).
    logging.getLogger("lightning.pytorch.trainer.connectors.checkpoint_connector").addFilter(
        lambda record: "`weights_only` was not set" not in record.getMessage()
    )
    # A run resumed in its own directory (a sweep's unfinished job, hydra.run.dir= of a stopped
    # run) finds its checkpoints there, as it should; another run's directory is refused before
    # anything is written (src/run_dirs.py).
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    # Optuna imports alembic (for a study kept in a database), which names each plugin it sets
    # up; a sweep here keeps its study in memory.
    logging.getLogger("alembic.runtime.plugins").addFilter(
        lambda record: not record.getMessage().startswith("setup plugin ")
    )
    # Matplotlib's mathtext (a log axis's tick labels) looks up its Computer Modern fonts even
    # where it draws in DejaVu Sans, and a font list without them (a distribution's matplotlib,
    # a font cache made by another one) says so for each; the figures here come out the same.
    logging.getLogger("matplotlib.font_manager").addFilter(
        lambda record: not record.getMessage().startswith("findfont: Font family ['cm")
    )
