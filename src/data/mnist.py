"""MNIST-format image datasets through torchvision, decoded once into tensors held in memory."""

import inspect
import math
import re
import struct
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.datasets.utils import check_integrity

from src.checks import at_least, one_of
from src.data.tensors import EpochShuffle, TensorBatches, eval_sampler
from src.errors import ConfigError, InputError


def mnist_format() -> dict[str, type]:
    """torchvision's datasets kept in MNIST's four IDX files, by the name `data.dataset` gives
    each (MNIST: mnist, FashionMNIST: fashion_mnist, KMNIST: kmnist), read from torchvision: one
    it adds is an option here with no code."""
    found = {}
    for name in sorted(dir(datasets)):
        cls = getattr(datasets, name)
        if not (isinstance(cls, type) and issubclass(cls, datasets.MNIST)):
            continue
        required = [p for p in inspect.signature(cls).parameters.values()
                    if p.default is p.empty and p.name != "root"]  # fmt: skip
        if isinstance(cls.resources, list) and not required:  # not QMNIST's files, EMNIST's split
            found[re.sub(r"(?<=[a-z])(?=[A-Z])", "_", name).lower()] = cls
    return found


DATASETS = mnist_format()


class DatasetUnavailable(InputError, RuntimeError):
    """The dataset's files are missing, truncated or corrupt; the message says what to do."""


class MNISTDataModule(L.LightningDataModule):
    """The official training set split into train/validation by a fixed generator; the official
    test set as test. Pixels are scaled to [0, 1] exactly as torchvision's `ToTensor` does."""

    def __init__(
        self,
        *,
        data_dir: str,
        dataset: str,
        batch_size: int,
        eval_batch_size: int,
        val_size: int,
        train_size: int | None,
        split_seed: int,
        normalize: bool,
        download: bool,
        seed: int,
    ):
        super().__init__()
        one_of("dataset", dataset, DATASETS)
        at_least(1, batch_size=batch_size, eval_batch_size=eval_batch_size, val_size=val_size)
        if train_size is not None:
            at_least(1, train_size=train_size)
        self.data_dir = data_dir
        self.dataset_cls = DATASETS[dataset]
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.val_size = val_size
        self.train_size = train_size
        self.split_seed = split_seed
        self.normalize = normalize
        self.download = download
        self.seed = seed
        self.stats: dict[str, float] = {}  # the normalization, when there is one
        self.train_set: TensorBatches | None = None
        self.val_set: TensorBatches | None = None
        self.test_set: TensorBatches | None = None

    @property
    def raw_folder(self) -> Path:
        """Where torchvision keeps (and looks for) the raw IDX files."""
        return Path(self.data_dir) / self.dataset_cls.__name__ / "raw"

    def prepare_data(self) -> None:
        """Download (or extract) the files when they are missing (once per node under DDP)."""
        extracted = (self.raw_folder / Path(name).stem for name, _ in self.dataset_cls.resources)
        if self.download and not all(path.is_file() for path in extracted):
            for train in (True, False):
                self._read(train, download=True)

    def setup(self, stage: str | None = None) -> None:
        """Decode the images once and keep them as tensors on the training device."""
        if self.train_set is None:
            self._build()
        if self.trainer is not None:
            device = self.trainer.strategy.root_device
            for split in (self.train_set, self.val_set, self.test_set):
                split.to(device)

    def _build(self) -> None:
        images, labels = self._read(train=True)
        if not 0 < self.val_size < len(images):
            raise ConfigError(
                f"data.val_size={self.val_size} must be between 1 and {len(images) - 1}: "
                f"the training set holds {len(images)} images"
            )
        order = torch.randperm(
            len(images), generator=torch.Generator().manual_seed(self.split_seed)
        )
        val_idx, train_idx = order[: self.val_size], order[self.val_size :]
        if self.train_size is not None:
            if self.train_size > len(train_idx):
                raise ConfigError(
                    f"data.train_size={self.train_size} is more than the {len(train_idx)} "
                    f"training images left after data.val_size={self.val_size}"
                )
            train_idx = train_idx[: self.train_size]  # the same images whatever the run's seed
        train_x, val_x = to_unit_float(images[train_idx]), to_unit_float(images[val_idx])
        test_images, test_labels = self._read(train=False)
        test_x = to_unit_float(test_images)
        if self.normalize:
            # Statistics of the training split only, so nothing leaks from validation or test.
            mean, std = train_x.mean(), train_x.std()
            for x in (train_x, val_x, test_x):
                x.sub_(mean).div_(std)
            self.stats = {"mean": mean.item(), "std": std.item()}
        self.train_set = TensorBatches(train_x, labels[train_idx])
        self.val_set = TensorBatches(val_x, labels[val_idx])
        self.test_set = TensorBatches(test_x, test_labels)

    def _read(self, train: bool, download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_files()
        try:
            ds = self.dataset_cls(self.data_dir, train=train, download=download)
        except (RuntimeError, OSError) as err:
            names = ", ".join(name for name, _ in self.dataset_cls.resources)
            reason = str(err).strip().splitlines()[0]
            raise DatasetUnavailable(
                f"{self.dataset_cls.__name__} is not readable in {self.raw_folder} ({reason}). "
                f"Put the four files {names} there, or run once with network access."
            ) from None
        split = "train" if train else "t10k"
        if len(ds.data) != len(ds.targets):
            raise DatasetUnavailable(
                f"{self.raw_folder}/{split}-*-ubyte hold {len(ds.data)} images but "
                f"{len(ds.targets)} labels: replace them with the official files"
            )
        bad = ((ds.targets < 0) | (ds.targets > 9)).nonzero()
        if len(bad):
            i = int(bad[0])
            raise DatasetUnavailable(
                f"{self.raw_folder / f'{split}-labels-idx1-ubyte'} holds the label "
                f"{int(ds.targets[i])} (at index {i}), not a class from 0 to 9: replace it "
                "with the official file"
            )
        return ds.data, ds.targets

    def state_dict(self) -> dict[str, float]:
        """Saved in checkpoints, so that predicting on new images normalizes them alike."""
        return self.stats

    def _check_files(self) -> None:
        """Refuse truncated or corrupt files with a message, before torchvision trips over them."""
        if Path(self.data_dir).is_file():
            raise DatasetUnavailable(
                f"data.data_dir={self.data_dir} is a file: give the folder that holds "
                f"{self.dataset_cls.__name__}/raw/"
            )
        for gz_name, md5 in self.dataset_cls.resources:
            gz = self.raw_folder / gz_name
            extracted = self.raw_folder / gz.stem
            if extracted.exists():
                check_idx_size(extracted)
            elif gz.exists() and not check_integrity(str(gz), md5):
                raise DatasetUnavailable(
                    f"{gz} is corrupt: its MD5 is not the official {md5}. "
                    "Replace it with the official file (or delete it to download it again)."
                )

    def train_dataloader(self) -> DataLoader:
        return self.train_set.loader(self.batch_size, EpochShuffle(len(self.train_set), self.seed))

    def val_dataloader(self) -> DataLoader:
        return self.val_set.loader(self.eval_batch_size, eval_sampler(self.val_set, self.trainer))

    def test_dataloader(self) -> DataLoader:
        return self.test_set.loader(self.eval_batch_size, eval_sampler(self.test_set, self.trainer))


def check_idx_size(path: Path) -> None:
    """An IDX file's header gives its dimensions: MNIST's N×28×28 images or N labels, N at least
    1, and the file's size must match them exactly."""
    try:
        with path.open("rb") as file:
            data = file.read(16)
    except OSError as err:  # a folder where the file should be, a file it may not read
        raise DatasetUnavailable(f"{path} cannot be read ({err.strerror}): replace it") from None
    ndim = data[3] if len(data) >= 4 else 0
    if len(data) < 4 + 4 * ndim or data[2] != 0x08 or not 1 <= ndim <= 3:
        raise DatasetUnavailable(f"{path} is not an MNIST-format IDX file: delete or replace it")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    kind, shape = ("images", (28, 28)) if "images" in path.name else ("labels", ())
    if tuple(dims[1:]) != shape:
        held, wanted = "×".join(map(str, dims)), "×".join(("N", *map(str, shape)))
        raise DatasetUnavailable(
            f"{path} holds {held} values where MNIST's {kind} are {wanted}: replace it with the "
            "official file"
        )
    if dims[0] == 0:
        raise DatasetUnavailable(f"{path} holds no {kind}: replace it with the official file")
    expected, actual = 4 + 4 * ndim + math.prod(dims), path.stat().st_size
    if actual != expected:
        raise DatasetUnavailable(
            f"{path} is truncated or corrupt: {actual} bytes where its header promises "
            f"{expected}. Delete it; it is extracted again from the official .gz file."
        )


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, 28, 28) → float (N, 1, 28, 28) in [0, 1], bit for bit like `ToTensor`."""
    return images.unsqueeze(1).float().div_(255)
