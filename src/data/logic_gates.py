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
    a few epochs rather than 4000 (Lightning's per-epoch work would otherwise dominate), and
    one `training_step` call runs `batches_per_call` of them. Validation and test see the table
    once.
    """

    def __init__(
        self, gate: str = "nand", steps_per_epoch: int = 1000, batches_per_call: int = 100
    ):
        super().__init__()
        if gate not in TRUTH_TABLES:
            raise ConfigError(f"data.gate={gate!r} is not one of: {', '.join(TRUTH_TABLES)}")
        self.gate = gate
        self.steps_per_epoch = steps_per_epoch
        self.batches_per_call = batches_per_call
        self.table = TensorBatches(
            torch.tensor(INPUTS), torch.tensor(TRUTH_TABLES[gate]).unsqueeze(1)
        )

    def setup(self, stage: str | None = None) -> None:
        if self.trainer is not None:
            self.table.to(self.trainer.strategy.root_device)

    def train_dataloader(self) -> "FullBatchEpoch":
        return FullBatchEpoch(self.table.tensors, self.steps_per_epoch, self.batches_per_call)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.table, batch_size=len(self.table), collate_fn=keep_batch)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


class FullBatchEpoch:
    """One epoch of full-batch steps, `per_call` to a training_step call.

    An iterable of its own rather than a DataLoader: there is nothing to shuffle, cut or shard
    (under DDP every rank steps on the whole table).
    """

    def __init__(self, batch: tuple[torch.Tensor, ...], steps: int, per_call: int):
        self.batch = batch
        self.steps = steps
        self.per_call = per_call

    def __len__(self) -> int:
        return -(-self.steps // self.per_call)

    def __iter__(self):
        for start in range(0, self.steps, self.per_call):
            yield RepeatedBatch(self.batch, min(self.per_call, self.steps - start))


class RepeatedBatch:
    """The same batch, `times` times over: the steps of one training_step call."""

    def __init__(self, batch: tuple[torch.Tensor, ...], times: int):
        self.batch = batch
        self.times = times

    def __len__(self) -> int:
        return self.times

    def __iter__(self):
        return iter([self.batch] * self.times)
