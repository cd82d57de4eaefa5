"""The one place this project reaches into Lightning's loops (checked with lightning 2.5 and 2.6).

A grouped training_step call (see `SupervisedModule.training_steps`) takes several optimizer steps,
of which Lightning sees only the last, and learns that the epoch's data is exhausted only after
the call. Two counts and one schedule step must be made up for; no public API does it.
tests/test_lightning_internals.py fails with a plain message if any of this moves.
"""

import lightning as L


def count_extra_step(trainer: L.Trainer) -> None:
    """Count one optimizer step taken inside a training_step call, as if Lightning had taken it:
    in the step count behind `trainer.global_step` (max_steps, checkpoints), kept by the
    automatic-optimization loop, and in the logging step `_batches_that_stepped`, the x-axis of
    everything Lightning logs (`self.log`, LearningRateMonitor)."""
    epoch_loop = trainer.fit_loop.epoch_loop
    epoch_loop.automatic_optimization.optim_progress.optimizer.step.increment_by(1)
    epoch_loop._batches_that_stepped += 1


def step_epoch_schedules(trainer: L.Trainer) -> None:
    """Step the schedules with interval "epoch" at the end of an epoch, as Lightning does.

    Lightning steps them after a training batch it knows to be the epoch's last; with a
    `dataloader_iter` training_step it only learns that after the step (the loop's `advance`
    checks `is_last_batch` before updating it), so it never steps them. Plateau schedules are
    stepped after validation and need nothing.
    """
    epoch = trainer.current_epoch + 1  # counted from 1 here, as Lightning counts it
    for config in trainer.lr_scheduler_configs:
        due = config.interval == "epoch" and epoch % config.frequency == 0
        if due and not config.reduce_on_plateau:
            trainer.lightning_module.lr_scheduler_step(config.scheduler, None)
