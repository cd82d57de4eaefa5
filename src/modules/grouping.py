"""When a training_step call may take several optimizer steps without anyone seeing a difference.

Lightning spends about as much time around a training_step call (hooks, loop bookkeeping, the
progress bar) as a whole optimizer step of the primer's small networks takes. Taking several steps
per call pays that once for all of them, but only whatever does not look at single steps can stay
blind to it. `grouping_blocker` names the first setting of a run that does look; the module then
takes Lightning's usual one step per call, and says why in one line.
"""

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    Callback,
    LearningRateMonitor,
    ModelCheckpoint,
    RichProgressBar,
    Timer,
    TQDMProgressBar,
)
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden

# Hooks that run once per optimizer step, or per batch of data, in Lightning's own loop.
STEP_HOOKS = (
    "on_train_batch_start",
    "on_train_batch_end",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
)
# What a LightningModule may also override to change a single step (or, configure_optimizers,
# what the optimizer and its schedule are).
MODULE_STEP_HOOKS = (
    *STEP_HOOKS,
    "configure_optimizers",
    "training_step",
    "backward",
    "optimizer_step",
    "optimizer_zero_grad",
    "configure_gradient_clipping",
    "lr_scheduler_step",
    "on_before_batch_transfer",
    "transfer_batch_to_device",
    "on_after_batch_transfer",
)


def epoch_level(callback: Callback, scheduled: bool) -> bool:
    """Whether a callback's step hooks do nothing that depends on seeing every step: Lightning's
    own callbacks under the settings below (a subclass keeps their hooks as they are), and the
    project's callbacks that say so. `scheduled`: the optimizer has a schedule (per epoch)."""
    if isinstance(callback, (TQDMProgressBar, RichProgressBar)):
        # Draws the number of batches done, which grouping keeps exact.
        base = TQDMProgressBar if isinstance(callback, TQDMProgressBar) else RichProgressBar
        ok = True
    elif isinstance(callback, ModelCheckpoint):
        # Saving every epoch excludes every_n_train_steps and train_time_interval.
        base, ok = ModelCheckpoint, bool(callback.every_n_epochs)
    elif isinstance(callback, LearningRateMonitor):
        # With logging_interval=None it logs per step what is scheduled per step (which blocks
        # grouping anyway) and any optimizer without a schedule.
        interval = callback.logging_interval
        base, ok = LearningRateMonitor, interval == "epoch" or (interval is None and scheduled)
    elif isinstance(callback, Timer):
        base, ok = Timer, callback.time_remaining() is None  # no max_time to check every step
    else:
        # The project's callbacks whose step hooks look only at an epoch's last step, on which a
        # group of steps always ends.
        return getattr(callback, "epoch_level_step_hooks", False)
    return ok and not any(is_overridden(hook, callback, parent=base) for hook in STEP_HOOKS)


def grouping_blocker(
    trainer: L.Trainer,
    module: L.LightningModule,
    base: type,
    optimizer: type,
    schedule_interval: str | None,
) -> str | None:
    """The first setting under which grouped steps would differ from one step per call, or None.

    Asked when fit sets up, before Lightning picks how to feed training_step. `base` is the
    module class whose own hooks handle groups (a subclass's overrides do not); `optimizer` and
    `schedule_interval` are what its configure_optimizers will build.
    """
    if not isinstance(trainer.strategy, SingleDeviceStrategy):
        return f"the {type(trainer.strategy).__name__} synchronizes every step"
    if trainer.precision != "32-true":
        return f"trainer.precision={trainer.precision} wraps every step"
    if trainer.gradient_clip_val:
        return f"trainer.gradient_clip_val={trainer.gradient_clip_val} clips every step"
    if trainer.accumulate_grad_batches != 1:
        return f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches}"
    for flag in ("fast_dev_run", "overfit_batches"):
        if getattr(trainer, flag):
            return f"trainer.{flag}={getattr(trainer, flag)} counts single batches"
    for flag in ("limit_train_batches", "val_check_interval"):
        value = getattr(trainer, flag, None)
        if not (isinstance(value, float) and value == 1.0):
            return f"trainer.{flag}={value} counts single batches"
    if trainer.check_val_every_n_epoch is None:
        return "trainer.check_val_every_n_epoch=None counts batches across epochs"
    if not isinstance(trainer.profiler, PassThroughProfiler):
        return f"the {type(trainer.profiler).__name__} times every step"
    if issubclass(optimizer, torch.optim.LBFGS):
        return "LBFGS re-evaluates each step"
    if schedule_interval == "step":
        return "the learning-rate schedule changes the rate every step"
    for hook in MODULE_STEP_HOOKS:
        if is_overridden(hook, module, parent=base):
            return f"{type(module).__name__}.{hook} is overridden"
    for callback in trainer.callbacks:
        hooks = [hook for hook in STEP_HOOKS if is_overridden(hook, callback, parent=Callback)]
        if hooks and not epoch_level(callback, scheduled=schedule_interval == "epoch"):
            return f"the {type(callback).__name__} callback hooks {hooks[0]}"
    return None
