"""Lightning's learning-rate finder before a run (`lr_find=true`): its plot and its suggestion in
the run directory, with nothing of the run itself changed."""

import copy
import logging
from pathlib import Path

from omegaconf import DictConfig

from src.names import LR_FIND_PLOT
from src.records import write_png

log = logging.getLogger(__name__)

# Lightning's defaults are 1e-8 to 1 over 100 steps; SGD on MNIST only starts to learn near 1e-3
# and diverges past about 1, so the range covers both ends (as the lr sweep preset does).
MIN_LR, MAX_LR, STEPS = 1e-5, 10.0, 100


def find_learning_rate(cfg: DictConfig, model, datamodule, run_dir: Path) -> float | None:
    """Run `Tuner.lr_find` on a copy of the model with a Trainer of its own, so that the run's
    weights, callbacks, loggers and checkpoints never see it; write lr_find.png and return the
    suggestion (None when the search ended too early to suggest one)."""
    from hydra.utils import instantiate
    from lightning.pytorch.tuner import Tuner

    trainer = instantiate(cfg.trainer, callbacks=[], logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False,
                          default_root_dir=str(run_dir))  # fmt: skip
    probe = copy.deepcopy(model)
    probe.num_classes = None  # the first loss is the run's own to report, not the probe's
    finder = Tuner(trainer).lr_find(
        probe, datamodule=datamodule, min_lr=MIN_LR, max_lr=MAX_LR,
        num_training=STEPS, update_attr=False,
    )  # fmt: skip
    suggestion = finder.suggestion() if finder else None
    if finder:
        fig = finder.plot(suggest=suggestion is not None, show=False)
        fig.axes[0].set_title(f"learning-rate finder, {STEPS} steps from {MIN_LR:g} to {MAX_LR:g}")
        write_png(run_dir / LR_FIND_PLOT, fig, dpi=100)
        import matplotlib.pyplot as plt

        plt.close(fig)  # Lightning draws it with pyplot, which would keep it
    said = f"optimizer.lr={suggestion:.3g}" if suggestion else "nothing (too few steps)"
    log.info("learning-rate finder suggests %s (%s); this run trains at optimizer.lr=%g",
             said, run_dir / LR_FIND_PLOT, cfg.optimizer.lr)  # fmt: skip
    return suggestion
