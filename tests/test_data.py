"""The DataModules on small MNIST-format files, through torchvision's real reader."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler
from torchvision import datasets
from torchvision.transforms import ToTensor

from src.data import LogicGateDataModule, MNISTDataModule
from src.data.logic_gates import TRUTH_TABLES
from src.data.mnist import DATASETS, DatasetUnavailable
from src.errors import ConfigError
from tests.conftest import make_mnist_files, write_idx

SETTINGS = {"dataset": "mnist", "batch_size": 64, "eval_batch_size": 5000, "val_size": 100,
            "train_size": None,
            "split_seed": 0, "normalize": False, "download": True, "seed": 0}  # fmt: skip


def make_dm(data_dir, **kwargs) -> MNISTDataModule:
    dm = MNISTDataModule(data_dir=str(data_dir), **(SETTINGS | kwargs))
    dm.prepare_data()  # files present: torchvision must not touch the network
    dm.setup("fit")
    return dm


def rows(images: torch.Tensor) -> list[tuple[float, ...]]:
    """Images as a sorted list of pixel tuples: equal lists mean the same images, in any order."""
    return sorted(map(tuple, images.flatten(1).tolist()))


def test_split_keeps_every_training_image_once_and_the_official_test_set(tiny_mnist):
    dm = make_dm(tiny_mnist)
    train_x, train_y = dm.train_set.tensors
    val_x, val_y = dm.val_set.tensors
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (500, 100, 100)
    official = datasets.MNIST(str(tiny_mnist), train=True)
    # Together the two splits are exactly the official training set, each image once.
    assert rows(torch.cat([train_x, val_x])) == rows(official.data.float().div(255))
    assert torch.equal(torch.cat([train_y, val_y]).sort().values, official.targets.sort().values)
    assert torch.equal(dm.test_set.tensors[1], datasets.MNIST(str(tiny_mnist), train=False).targets)


def test_pixels_match_torchvision_to_tensor_bit_for_bit(tiny_mnist):
    dm = make_dm(tiny_mnist)
    reference = datasets.MNIST(str(tiny_mnist), train=False, transform=ToTensor())
    for i in (0, 17, 99):
        image, label = reference[i]
        assert torch.equal(dm.test_set.tensors[0][i], image)
        assert dm.test_set.tensors[1][i].item() == label
    assert dm.test_set.tensors[0].dtype == torch.float32
    assert dm.test_set.tensors[0].min() >= 0 and dm.test_set.tensors[0].max() == 1


def test_split_depends_on_split_seed_only(tiny_mnist):
    a = make_dm(tiny_mnist, seed=1)
    b = make_dm(tiny_mnist, seed=2)
    c = make_dm(tiny_mnist, split_seed=5)
    assert torch.equal(a.val_set.tensors[0], b.val_set.tensors[0])
    assert not torch.equal(a.val_set.tensors[0], c.val_set.tensors[0])


def test_train_batches_cover_the_split_once_per_epoch_in_a_seeded_order(tiny_mnist):
    dm = make_dm(tiny_mnist, batch_size=64, seed=3)
    batches = list(dm.train_dataloader())
    assert len(batches) == len(dm.train_dataloader()) == math.ceil(500 / 64)
    assert [len(y) for _, y in batches] == [64] * 7 + [500 - 7 * 64]
    x, y = batches[0]
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    seen = torch.cat([x.flatten(1) for x, _ in batches])
    assert rows(seen) == rows(dm.train_set.tensors[0])

    def first_labels(epoch, seed=3):
        loader = make_dm(tiny_mnist, batch_size=64, seed=seed).train_dataloader()
        loader.sampler.set_epoch(epoch)
        return next(iter(loader))[1]

    assert torch.equal(first_labels(0), y)  # same seed, same epoch: same order
    assert not torch.equal(first_labels(1), y)  # the next epoch reshuffles
    assert not torch.equal(first_labels(0, seed=4), y)  # another seed, another order


def test_eval_loaders_keep_the_order(tiny_mnist):
    dm = make_dm(tiny_mnist, eval_batch_size=30)
    labels = torch.cat([y for _, y in dm.test_dataloader()])
    assert torch.equal(labels, dm.test_set.tensors[1])
    assert len(dm.val_dataloader()) == math.ceil(100 / 30)


@pytest.mark.parametrize("world_size", [2, 3, 7])
def test_eval_loaders_under_ddp_read_every_image_once(tiny_mnist, world_size):
    """Each rank reads its own block of the validation and test sets, unpadded and in order (100
    images on 3 ranks: 33, 33 and 34), in a DistributedSampler, which Lightning leaves in place."""
    dm = make_dm(tiny_mnist, eval_batch_size=11)
    for name, split in (("val_dataloader", dm.val_set), ("test_dataloader", dm.test_set)):
        shares = []
        for rank in range(world_size):
            dm.trainer = SimpleNamespace(world_size=world_size, global_rank=rank)
            loader = getattr(dm, name)()
            assert isinstance(loader.sampler, DistributedSampler)
            shares.append([torch.cat(parts) for parts in zip(*loader, strict=True)])
        for i, tensor in enumerate(split.tensors):  # images, then labels
            assert torch.equal(torch.cat([share[i] for share in shares]), tensor)
        sizes = [len(share[1]) for share in shares]
        assert max(sizes) - min(sizes) <= 1


def test_an_eval_set_smaller_than_the_ranks_is_refused():
    dm = LogicGateDataModule(gate="nand", steps_per_epoch=1)
    dm.trainer = SimpleNamespace(world_size=5, global_rank=0)
    with pytest.raises(ConfigError, match="4 examples cannot be shared by 5 processes"):
        dm.val_dataloader()


def test_normalize_uses_training_split_statistics(tiny_mnist):
    dm = make_dm(tiny_mnist, normalize=True)
    train_x = dm.train_set.tensors[0]
    assert abs(train_x.mean().item()) < 1e-5
    assert abs(train_x.std().item() - 1) < 1e-5
    raw = make_dm(tiny_mnist)
    mean, std = raw.train_set.tensors[0].mean(), raw.train_set.tensors[0].std()
    torch.testing.assert_close(dm.test_set.tensors[0], (raw.test_set.tensors[0] - mean) / std)


@pytest.mark.parametrize(("dataset", "folder"), [("fashion_mnist", "FashionMNIST"),
                                                ("kmnist", "KMNIST")])  # fmt: skip
def test_each_mnist_format_dataset_reads_its_own_folder(tmp_path, dataset, folder):
    make_mnist_files(tmp_path, folder=folder, n_train=200, n_test=50)
    dm = make_dm(tmp_path, dataset=dataset)
    assert (len(dm.train_set), len(dm.test_set)) == (100, 50)
    assert dm.raw_folder == tmp_path / folder / "raw"


def test_the_datasets_are_torchvisions_in_mnists_files():
    """Named from torchvision's classes; QMNIST (other files) and EMNIST (a split) are not."""
    assert {"mnist", "fashion_mnist", "kmnist"} <= set(DATASETS)
    assert not {"qmnist", "emnist"} & set(DATASETS)


def test_missing_files_name_the_folder(tmp_path):
    dm = MNISTDataModule(data_dir=str(tmp_path), **(SETTINGS | {"download": False}))
    with pytest.raises(DatasetUnavailable, match=str(tmp_path / "MNIST" / "raw")):
        dm.setup("fit")


@pytest.mark.parametrize(("name", "array", "said"), [
    ("train-images-idx3-ubyte", np.zeros((600, 32, 32)), "holds 600×32×32 values where MNIST's "
     "images are N×28×28"),
    ("train-images-idx3-ubyte", np.zeros((600, 784)), "holds 600×784 values"),
    ("train-images-idx3-ubyte", np.zeros(600), "holds 600 values where MNIST's images"),
    ("t10k-images-idx3-ubyte", np.zeros((0, 28, 28)), "holds no images"),
    ("t10k-labels-idx1-ubyte", np.zeros((100, 1)), "holds 100×1 values where MNIST's labels are N"),
])  # fmt: skip
def test_an_idx_file_of_another_shape_is_named_with_what_it_holds(name, array, said, tmp_path):
    """A valid header with the wrong dimensions: one message naming the file, not a shape error
    deep inside the network."""
    make_mnist_files(tmp_path)
    path = tmp_path / "MNIST" / "raw" / name
    write_idx(path, array)
    with pytest.raises(DatasetUnavailable) as err:
        make_dm(tmp_path)
    assert str(err.value).startswith(f"{path} {said}")


def test_validation_split_larger_than_the_training_set_is_refused(tiny_mnist):
    with pytest.raises(ValueError, match="data.val_size=600"):
        MNISTDataModule(data_dir=str(tiny_mnist), **(SETTINGS | {"val_size": 600})).setup("fit")


def test_train_size_keeps_the_same_first_images_of_the_split(tiny_mnist):
    full = MNISTDataModule(data_dir=str(tiny_mnist), **SETTINGS)
    part = MNISTDataModule(data_dir=str(tiny_mnist), **(SETTINGS | {"train_size": 50}))
    for dm in (full, part):
        dm.setup("fit")
    assert len(part.train_set) == 50 and len(part.val_set) == len(full.val_set) == 100
    assert torch.equal(part.train_set.tensors[0], full.train_set.tensors[0][:50])
    with pytest.raises(ConfigError, match="data.train_size=501 is more than the 500"):
        MNISTDataModule(data_dir=str(tiny_mnist), **(SETTINGS | {"train_size": 501})).setup("fit")


def test_unknown_dataset_names_the_valid_ones():
    valid = ", ".join(DATASETS)
    with pytest.raises(ValueError, match=f"dataset='emnist_x' is not one of: {valid}$"):
        MNISTDataModule(data_dir="data", **(SETTINGS | {"dataset": "emnist_x"}))


@pytest.mark.parametrize("gate", sorted(TRUTH_TABLES))
def test_gate_loader_serves_the_whole_table_steps_per_epoch_times(gate):
    dm = LogicGateDataModule(gate=gate, steps_per_epoch=7)
    dm.setup("fit")
    steps = list(dm.train_dataloader())
    assert len(steps) == len(dm.train_dataloader()) == 7
    for x, y in steps:
        assert x.tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
        assert y.flatten().tolist() == list(TRUTH_TABLES[gate])
    assert len(list(dm.val_dataloader())) == len(list(dm.test_dataloader())) == 1


def test_nand_truth_table():
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    assert list(TRUTH_TABLES["nand"]) == [float(not (a and b)) for a, b in x]
    assert list(TRUTH_TABLES["xor"]) == [float(a != b) for a, b in x]
