"""In-memory tensor datasets whose batches are cut with one index, not sample by sample."""

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class TensorBatches(Dataset):
    """Equal-length tensors held in memory (on the training device if moved there).

    A DataLoader with a batch size hands `__getitems__` the whole list of indices, so a batch is one
    gather per tensor instead of `batch_size` Python calls and a collate. Samplers stay in charge of
    the order, which keeps Lightning's DistributedSampler able to shard the data under DDP.
    """

    def __init__(self, *tensors: torch.Tensor):
        if len({len(t) for t in tensors}) != 1:
            raise ValueError("all tensors must have the same length")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[index] for t in self.tensors)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        first = indices[0]
        if indices == list(range(first, first + len(indices))):
            # In order, as evaluation reads: a view, not a copy.
            return tuple(t[first : first + len(indices)] for t in self.tensors)
        index = torch.as_tensor(indices, device=self.tensors[0].device)
        return gather(self.tensors, index)

    def to(self, device: torch.device | str) -> "TensorBatches":
        """Move every tensor to `device` (a no-op when already there)."""
        self.tensors = tuple(t.to(device) for t in self.tensors)
        return self


def gather(tensors: tuple[torch.Tensor, ...], index: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The rows `index` of each tensor. index_select, not `t[index]`: on the CPU it copies a
    minibatch of images in half the time of advanced indexing, for the same values."""
    return tuple(t.index_select(0, index) for t in tensors)


def keep_batch(batch):
    """Collate function that keeps what `__getitems__` built: the batch is already stacked."""
    return batch


def training_loader(
    data: TensorBatches, batch_size: int, batches_per_call: int, sampler: Sampler
) -> DataLoader:
    """Minibatches of `batch_size` in the sampler's order, handed over `batches_per_call` at a
    time: one `training_step` call runs them all (see `SupervisedModule`). The minibatches are
    exactly those an ungrouped loader would give."""
    return DataLoader(
        MinibatchGroups(data, batch_size),
        batch_size=batch_size * batches_per_call,
        sampler=sampler,
        collate_fn=keep_batch,
    )


class MinibatchGroups(Dataset):
    """Training view of a `TensorBatches`: a DataLoader batch of indices becomes `Minibatches`."""

    def __init__(self, data: TensorBatches, batch_size: int):
        self.data = data
        self.batch_size = batch_size

    def __len__(self) -> int:
        return len(self.data)

    def __getitems__(self, indices: list[int]) -> "Minibatches":
        index = torch.as_tensor(indices, device=self.data.tensors[0].device)
        return Minibatches(self.data.tensors, index, self.batch_size)


class Minibatches:
    """Consecutive minibatches, kept as indices and gathered one at a time as they are iterated.

    Gathering a whole group at once would copy it out of the CPU cache before its first step
    ever reads it; one minibatch at a time is what a plain loop does.
    """

    def __init__(self, tensors: tuple[torch.Tensor, ...], index: torch.Tensor, batch_size: int):
        self.tensors = tensors
        self.index = index
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.index) // self.batch_size)

    def __iter__(self):
        for index in self.index.split(self.batch_size):
            yield gather(self.tensors, index)


class EpochShuffle(Sampler[int]):
    """Random order drawn from (seed, epoch) alone.

    A resumed run therefore sees exactly the order an uninterrupted one would. Lightning calls
    `set_epoch` at the start of every epoch.
    """

    def __init__(self, size: int, seed: int):
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())
