"""In-memory tensor datasets whose batches are cut with one index, not sample by sample."""

from itertools import islice

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from src.errors import ConfigError


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

    def __getitem__(self, index: int | torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One example, or the batch of a tensor of indices."""
        if isinstance(index, torch.Tensor):
            # index_select, not t[index]: on the CPU it copies a minibatch of images in half the
            # time of advanced indexing, for the same values.
            return tuple(t.index_select(0, index) for t in self.tensors)
        return tuple(t[index] for t in self.tensors)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        first, last = indices[0], indices[-1]
        if last - first == len(indices) - 1 and indices == list(range(first, last + 1)):
            # In order, as evaluation reads: a view, not a copy.
            return tuple(t[first : first + len(indices)] for t in self.tensors)
        return self[torch.as_tensor(indices, device=self.tensors[0].device)]

    def to(self, device: torch.device | str) -> "TensorBatches":
        """Move every tensor to `device` (a no-op when already there)."""
        self.tensors = tuple(t.to(device) for t in self.tensors)
        return self

    def loader(self, batch_size: int, sampler: Sampler | None = None) -> "TensorLoader":
        """Batches of `batch_size` in the sampler's order (or in order), already stacked."""
        return TensorLoader(self, batch_size=batch_size, sampler=sampler, collate_fn=keep_batch)


class TensorLoader(DataLoader):
    """A DataLoader that knows where it is in an epoch, and whose batches of an `EpochShuffle`
    order are cut straight from the shuffled index tensor.

    Its state (the epoch and how many batches it has served of it) travels in Lightning's
    checkpoints, so a run stopped in the middle of an epoch resumes with the very next batch.
    Cutting from the index tensor gives the same batches as DataLoader's own iterator, without
    building each index list in Python and converting it back (a tenth of a training step, per
    step); under any other sampler (Lightning swaps in its own under DDP or overfit_batches) the
    batches are DataLoader's own.
    """

    served: tuple[int | None, int] = (None, 0)  # (epoch, batches of it handed out)
    resume_at: tuple[int | None, int] = (None, 0)  # from a checkpoint: skip that many

    def __iter__(self):
        # A generator: the epoch's order is drawn at its first batch, after Lightning has set the
        # sampler's epoch (a resumed run creates the iterator before that).
        epoch = getattr(self.sampler, "epoch", None)
        skip = self.resume_at[1] if self.resume_at[0] == epoch else 0
        self.resume_at = (None, 0)
        fast = isinstance(self.sampler, EpochShuffle) and not (self.num_workers or self.drop_last)
        batches = self.shuffled_batches(skip) if fast else islice(super().__iter__(), skip, None)
        for served, batch in enumerate(batches, start=skip + 1):
            self.served = (epoch, served)
            yield batch

    def shuffled_batches(self, skip: int):
        order = self.sampler.order().to(self.dataset.tensors[0].device)
        for index in order.split(self.batch_size)[skip:]:
            yield self.dataset[index]

    def state_dict(self) -> dict:
        return {"epoch": self.served[0], "batches": self.served[1]}

    def load_state_dict(self, state: dict) -> None:
        self.resume_at = (state["epoch"], state["batches"])


def keep_batch(batch):
    """Collate function that keeps what `__getitems__` built: the batch is already stacked."""
    return batch


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

    def order(self) -> torch.Tensor:
        """This epoch's order of the indices."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.size, generator=generator)

    def __iter__(self):
        return iter(self.order().tolist())


class EvalShard(DistributedSampler):
    """One DDP rank's share of a validation or test set, in order: each example on exactly one rank.

    Lightning shards a plain loader with torch's DistributedSampler, which pads the set to a
    multiple of the ranks (MNIST's 10,000 test images on 3 ranks are read as 10,002), so numbers
    summed over the ranks count a few examples twice. This one does not pad: rank r reads the
    contiguous block [r·n/R, (r+1)·n/R), so shares differ by one example at most and the ranks may
    run different numbers of batches, which evaluation allows as long as nothing syncs per step
    (no gradients; the metrics sync once, at the epoch's end). Being a DistributedSampler, it is
    left in place by Lightning, which replaces only samplers that are not.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        size = len(dataset)
        self.start, stop = size * rank // num_replicas, size * (rank + 1) // num_replicas
        # DistributedSampler's own counts, made exact: this rank's share, and no padding.
        self.num_samples, self.total_size = stop - self.start, size

    def __iter__(self):
        return iter(range(self.start, self.start + self.num_samples))


def eval_sampler(dataset: Dataset, trainer) -> EvalShard | None:
    """The sampler of an evaluation loader: this rank's `EvalShard` under DDP, else None (in
    order). `trainer` is the datamodule's (None outside a Trainer)."""
    if trainer is None or trainer.world_size == 1:
        return None
    if len(dataset) < trainer.world_size:
        # A rank with no batch: Lightning stops with a traceback about a zero-length loader.
        raise ConfigError(
            f"an evaluation set of {len(dataset)} examples cannot be shared by "
            f"{trainer.world_size} processes, each needing one at least: lower trainer.devices"
        )
    return EvalShard(dataset, trainer.world_size, trainer.global_rank)
