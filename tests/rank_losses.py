"""A test-only callback: every rank writes its learning rate and the loss and size of each
minibatch it trained on, so a test can check that the ranks trained with one run's settings and
that a logged epoch metric is taken over every rank's minibatches."""

import json
from pathlib import Path

import lightning as L


class RankLosses(L.Callback):
    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)
        self.batches: list[tuple[int, float, int]] = []  # (epoch, loss, minibatch size)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.batches.append((trainer.current_epoch, loss.item(), len(batch[1])))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        path = self.out_dir / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps({"lr": lr, "batches": self.batches}))
