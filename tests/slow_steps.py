"""A test-only callback: each training step takes `seconds` longer while the file `while_exists`
exists, so that a job is surely still training when its launcher's time limit comes, and, the
file removed, its continuation runs at full speed."""

import os
import time

import lightning as L


class SlowSteps(L.Callback):
    def __init__(self, seconds: float, while_exists: str):
        self.seconds = seconds
        self.while_exists = while_exists

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if os.path.exists(self.while_exists):
            time.sleep(self.seconds)
