"""The one place this project reaches into Lightning's loops (checked with lightning 2.5 and 2.6).

A grouped training_step call (see `SupervisedModule.training_steps`) takes several optimizer steps
on as many minibatches, of which Lightning sees only the last. The others are added to the counts
Lightning keeps of them; no public API advances these. tests/test_lightning_internals.py fails
with a plain message if any of them moves.
"""

import lightning as L


def count_extra_step(trainer: L.Trainer) -> None:
    """Count one optimizer step, on one minibatch, taken inside a training_step call, as if
    Lightning had taken it in a call of its own:
    - the optimizer-step count behind `trainer.global_step` (max_steps, checkpoints), kept by the
      automatic-optimization loop;
    - the epoch's batch count (where validation falls, when the epoch ends and its schedules
      step, where a resumed epoch takes up its data);
    - the logging step `_batches_that_stepped`, the x-axis of everything Lightning logs
      (`self.log`, LearningRateMonitor).
    """
    epoch_loop = trainer.fit_loop.epoch_loop
    epoch_loop.automatic_optimization.optim_progress.optimizer.step.increment_by(1)
    epoch_loop.batch_progress.increment_by(1)
    epoch_loop._batches_that_stepped += 1
