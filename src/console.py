"""What the console shows of the libraries a run uses: one place decides what is noise, for
every entry point (src.train, src.eval, src.predict)."""

import functools
import logging
import warnings


@functools.cache  # once per process: a sweep's jobs share it
def quiet_console() -> None:
    """Leave out of the console (and train.log) what tells a user nothing about their run; each
    was checked not to apply here. Every entry point calls it once it has imported Lightning."""
    # `import lightning` adds a console handler of its own; Hydra's handlers already print its
    # messages and copy them into train.log, so drop it rather than print every line twice.
    logging.getLogger("lightning").handlers.clear()
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
    # checkpoints are loaded, which is always weights-only here.
    logging.getLogger("lightning.pytorch.trainer.connectors.checkpoint_connector").addFilter(
        lambda record: "`weights_only` was not set" not in record.getMessage()
    )
