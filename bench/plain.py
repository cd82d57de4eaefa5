"""The baselines `make bench` compares the framework with: plain, eager PyTorch programs doing the
same work as `python -m src.train +experiment=mnist_sgd` (or `nand`), with nothing around them.

    python bench/plain.py mnist [--loader tensors|dataloader] [--device cpu|cuda] [--threads N]
    python bench/plain.py nand [--threads N]

Prints one JSON line: the training phase's seconds (training and per-epoch validation) and the
final metrics. The caller times the whole process and reads its peak memory.
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch import nn


def mnist(args) -> dict:
    """55k/5k split of the official training set, 5 epochs of SGD with validation, then test."""
    from torchvision import datasets

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    split = torch.Generator().manual_seed(0)
    if args.loader == "dataloader":
        # The primer's way: PIL images through ToTensor, one sample at a time.
        from torch.utils.data import DataLoader, random_split
        from torchvision.transforms import ToTensor

        full = datasets.MNIST(args.data_dir, train=True, download=True, transform=ToTensor())
        train_set, val_set = random_split(full, [55_000, 5_000], generator=split)
        test_set = datasets.MNIST(args.data_dir, train=False, download=True, transform=ToTensor())
        train_batches = DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
        val_batches = DataLoader(val_set, batch_size=1000)
        test_batches = DataLoader(test_set, batch_size=1000)
    else:
        # Decoded once into tensors; a batch is one index into them.
        def load(train):
            ds = datasets.MNIST(args.data_dir, train=train, download=True)
            return ds.data.unsqueeze(1).float().div_(255).to(device), ds.targets.to(device)

        x, y = load(train=True)
        order = torch.randperm(len(x), generator=split).to(device)
        val_idx, train_idx = order[:5_000], order[5_000:]
        train_x, train_y, val = x[train_idx], y[train_idx], (x[val_idx], y[val_idx])
        del x, y
        test = load(train=False)

        def train_batches_for(epoch):
            perm = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(epoch))
            perm = perm.to(device)
            for i in range(0, len(perm), args.batch_size):
                idx = perm[i : i + args.batch_size]
                yield train_x[idx], train_y[idx]

        def chunks(xy):
            return [(xy[0][i : i + 1000], xy[1][i : i + 1000]) for i in range(0, len(xy[0]), 1000)]

        val_batches, test_batches = chunks(val), chunks(test)

    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)

    def accuracy(batches):
        correct = total = 0
        with torch.no_grad():
            for xb, yb in batches:
                xb, yb = xb.to(device), yb.to(device)
                correct += (model(xb).argmax(1) == yb).sum()
                total += len(yb)
        return (correct / total).item()

    start = time.perf_counter()
    for epoch in range(args.epochs):
        batches = train_batches if args.loader == "dataloader" else train_batches_for(epoch)
        for xb, yb in batches:
            xb, yb = xb.to(device), yb.to(device)
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        val_acc = accuracy(val_batches)
    train_seconds = time.perf_counter() - start
    return {"train_seconds": train_seconds, "val_acc": val_acc, "test_acc": accuracy(test_batches)}


def nand(args) -> dict:
    """The primer's NAND net: 2→3→1 sigmoids, MSE, SGD lr 0.5, 4000 full-batch steps."""
    torch.manual_seed(args.seed)
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    y = torch.tensor([[1.0], [1.0], [1.0], [0.0]])
    model = nn.Sequential(nn.Linear(2, 3), nn.Sigmoid(), nn.Linear(3, 1), nn.Sigmoid())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    start = time.perf_counter()
    for _ in range(4000):
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {"train_seconds": time.perf_counter() - start, "test_loss": loss.item()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=["mnist", "nand"])
    parser.add_argument("--loader", choices=["tensors", "dataloader"], default="tensors")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads; 0: PyTorch's")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(mnist(args) if args.task == "mnist" else nand(args)))
