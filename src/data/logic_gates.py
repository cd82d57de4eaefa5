"""Two-input logic gates: the whole truth table is one batch."""

import lightning as L
import torch
from torch.utils.data import DataLoader

from src.checks import at_least, one_of
from src.data.tensors import TensorBatches, eval_sampler

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
    a few epochs rather than 4000 (Lightning's per-epoch work would otherwise dominate).
    Validation and test see the table once.
    """

    def __init__(self, *, gate: str, steps_per_epoch: int):
        super().__init__()
        one_of("gate", gate, TRUTH_TABLES)
        at_least(1, steps_per_epoch=steps_per_epoch)
        self.gate = gate
        self.steps_per_epoch = steps_per_epoch
        self.table = TensorBatches(
            torch.tensor(INPUTS), torch.tensor(TRUTH_TABLES[gate]).unsqueeze(1)
        )

    def setup(self, stage: str | None = None) -> None:
        if self.trainer is not None:
            self.table.to(self.trainer.strategy.root_device)

    def train_dataloader(self) -> "FullBatches":
        return FullBatches(self.table.tensors, self.steps_per_epoch)

    def val_dataloader(self) -> DataLoader:
        return self.table.loader(len(self.table), eval_sampler(self.table, self.trainer))

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


class FullBatches:
    """The whole table as the batch of every one of an epoch's `steps`.

    An iterable of its own rather than a DataLoader: there is nothing to shuffle, cut or shard
    (under DDP every rank steps on the whole table).
    """

    def __init__(self, batch: tuple[torch.Tensor, ...], steps: int):
        self.batch = batch
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        return iter([self.batch] * self.steps)
