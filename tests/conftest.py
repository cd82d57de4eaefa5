"""Shared fixtures: tiny MNIST-format files, the real MNIST when present, and a run helper."""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# The four official files where `make data` links them (or $MNIST_RAW); tests that need them
# are skipped, saying why, when they are not there.
REAL_MNIST_RAW = Path(os.environ.get("MNIST_RAW", REPO / "data/MNIST/raw"))
IDX_NAMES = {
    (True, "images"): "train-images-idx3-ubyte",
    (True, "labels"): "train-labels-idx1-ubyte",
    (False, "images"): "t10k-images-idx3-ubyte",
    (False, "labels"): "t10k-labels-idx1-ubyte",
}


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the IDX format of the MNIST files (big-endian header)."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def make_mnist_files(root: Path, folder: str = "MNIST", n_train: int = 600, n_test: int = 100):
    """Fake but learnable digits: class k lights up band k of the image, plus noise."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for train, n in ((True, n_train), (False, n_test)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 60, (n, 28, 28))
        for i, k in enumerate(labels):
            images[i, 2 * k + 4 : 2 * k + 6, 4:24] = 255
        write_idx(raw / IDX_NAMES[train, "images"], images)
        write_idx(raw / IDX_NAMES[train, "labels"], labels)
    return root


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory) -> Path:
    """A data_dir holding 600 training and 100 test images in torchvision's MNIST layout."""
    return make_mnist_files(tmp_path_factory.mktemp("tiny_data"))


@pytest.fixture(scope="session")
def real_mnist(tmp_path_factory) -> Path:
    """A data_dir whose MNIST/raw links to the real files; skips when they are absent."""
    if not all((REAL_MNIST_RAW / f"{name}.gz").is_file() for name in IDX_NAMES.values()):
        pytest.skip(f"the real MNIST files are not in {REAL_MNIST_RAW} (set MNIST_RAW)")
    root = tmp_path_factory.mktemp("real_data")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in IDX_NAMES.values():
        (raw / f"{name}.gz").symlink_to(REAL_MNIST_RAW / f"{name}.gz")
    return root


def run_train(*overrides: str, cwd: Path = REPO, check: bool = True) -> subprocess.CompletedProcess:
    """Run `python -m src.train` with the given overrides in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "src.train", *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"training failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())
