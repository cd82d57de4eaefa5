"""Shared fixtures: tiny MNIST-format files, the real MNIST when present, and a run helper."""

import ast
import functools
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# The interpreter a test starts a command of the project's with: `[*PYTHON, "-m", "src.train"]`
# runs as `python -m src.train` does, forked from a server that has imported the libraries
# (tests/fork_server.py).
PYTHON = [sys.executable, "-S", str(REPO / "tests" / "fork_server.py")]
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


def pytest_collection_modifyitems(items) -> None:
    """In an xdist worker (pytest -n N), the slow tests first: the suite ends when the last test
    to start ends, and the fast ones, dealt out last, keep both workers busy to the end. Every
    worker sorts alike, so they collect the same list. A run in one process keeps file order."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.hookimpl(optionalhook=True)  # an xdist hook: -p no:xdist has none
def pytest_xdist_make_scheduler(config, log):
    """`pytest -n N` (make test) as xdist's default `load` distribution, except that the tests
    that read one run of a module-scoped fixture named in their module's SHARED_RUNS go to one
    worker, which makes that run once: `load` deals consecutive tests out in turn, and each
    worker given one of them would make it again. (xdist's own --dist loadgroup does this for
    tests marked xdist_group, but under pytest 9.2 it no longer sees its marks.)"""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SharedRunScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return shared_run(config.rootpath, nodeid) or nodeid  # else a scope of its own

    return SharedRunScheduling(config, log)


@functools.cache
def shared_runs(path: Path) -> dict[str, str]:
    """{test function: the SHARED_RUNS fixture it reads} of one test module, from its source: the
    controller of xdist's workers collects no test, and imports none."""
    if path.suffix != ".py" or "SHARED_RUNS" not in (source := path.read_text()):
        return {}
    tree = ast.parse(source)
    values = {target.id: node.value for node in tree.body if isinstance(node, ast.Assign)
              for target in node.targets if isinstance(target, ast.Name)}  # fmt: skip
    names = ast.literal_eval(values["SHARED_RUNS"])
    tests = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
            read = [name for name in names if name in {a.arg for a in node.args.args}]
            if read:
                tests[node.name] = read[0]
    return tests


def shared_run(rootpath: Path, nodeid: str) -> str | None:
    """The scheduling group of a test that reads a SHARED_RUNS fixture, else None."""
    file, _, name = nodeid.partition("::")
    fixture = shared_runs(rootpath / file).get(name.split("[")[0])
    return f"{file}::{fixture}" if fixture else None


@pytest.fixture(scope="session", autouse=True)
def fork_server():
    """The server PYTHON's clients fork their commands from, one per pytest process, ready
    before the first test (a client without one runs the real interpreter)."""
    from tests.fork_server import ADDRESS

    folder = tempfile.mkdtemp(prefix="fork-server-")
    address = os.path.join(folder, "socket")
    server = subprocess.Popen([sys.executable, PYTHON[-1], "--serve", address], cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)},
                              stdin=subprocess.DEVNULL)  # fmt: skip
    os.environ[ADDRESS] = address
    deadline = time.monotonic() + 120
    while not os.path.exists(address) and server.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    yield
    del os.environ[ADDRESS]
    server.kill()
    server.wait()
    shutil.rmtree(folder)


def run_train(*overrides: str, cwd: Path = REPO, check: bool = True) -> subprocess.CompletedProcess:
    """Run `python -m src.train` with the given overrides in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run(
        [*PYTHON, "-m", "src.train", *overrides],
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
