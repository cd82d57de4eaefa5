"""Two-input logic gates: the whole truth table is one batch."""

import lightning as L
import torch
from torch.utils.data import DataLoader

from src.config import ConfigError
from src.data.tensors import TensorBatches, keep_batch

INPUTS = ((0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0))
TRUTH_TABLES = {
    "and": (0.0, 0.0, 0.0, 1.0),
    "or": (0.0, 1.0, 1.0, 1.0),
    "nand": (1.0, 1.0, 1.0, 0.0),
    "xor": (0.0, 1.0, 1.0, 0.0),
}


class LogicGateDataModule(L.LightningDataModule):
    """A gate's four-row truth table, trained full-batch.

    One training epoch is `steps_per_epoch` steps on the whole table, so a 4000-iteration run is
    a few dozen epochs rather than 4000 (Lightning's per-epoch work would otherwise dominate).
    Validation and test see the same table once.
    """

    def __init__(self, gate: str = "nand", steps_per_epoch: int = 100):
        super().__init__()
        if gate not in TRUTH_TABLES:
            raise ConfigError(f"data.gate={gate!r} is not one of: {', '.join(TRUTH_TABLES)}")
        self.gate = gate
        self.steps_per_epoch = steps_per_epoch
        self.table = TensorBatches(
            torch.tensor(INPUTS), torch.tensor(TRUTH_TABLES[gate]).unsqueeze(1)
        )

    def setup(self, stage: str | None = None) -> None:
        if self.trainer is not None:
            self.table.to(self.trainer.strategy.root_device)

    def _loader(self, repeats: int) -> DataLoader:
        rows = list(range(len(self.table)))
        return DataLoader(
            self.table, batch_size=len(rows), sampler=rows * repeats, collate_fn=keep_batch
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.steps_per_epoch)

    def val_dataloader(self) -> DataLoader:
        return self._loader(1)

    def test_dataloader(self) -> DataLoader:
        return self._loader(1)
