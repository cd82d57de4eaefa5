"""A test-only callback: every rank saves its final weights, so a test can check that DDP kept the
ranks in step (every optimizer step averages the ranks' gradients)."""

from pathlib import Path

import lightning as L
import torch


class RankWeights(L.Callback):
    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().cpu() for k, v in pl_module.net.state_dict().items()}
        torch.save(weights, self.out_dir / f"rank{trainer.global_rank}.pt")
