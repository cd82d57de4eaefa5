"""Resume, determinism, divergence, refusal of bad input, and DDP: each from a real run."""

import gzip
import os
import pickle
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import REPO, make_mnist_files, read_metrics, run_train

NUMBERS = ("train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc", "steps")


def same_numbers(a: dict, b: dict) -> bool:
    return {k: a.get(k) for k in NUMBERS} == {k: b.get(k) for k in NUMBERS}


@pytest.fixture(scope="module")
def small_mnist(tmp_path_factory):
    """3000 training images: enough steps per epoch to kill a run between two checkpoints."""
    return make_mnist_files(tmp_path_factory.mktemp("small"), n_train=3000, n_test=200)


@pytest.fixture(scope="module")
def base(small_mnist):
    return ("+experiment=mnist_sgd", f"data.data_dir={small_mnist}", "data.val_size=200")


@pytest.fixture(scope="module")
def uninterrupted(base, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("full")
    run_train(*base, "trainer.max_epochs=4", f"hydra.run.dir={run_dir}")
    return read_metrics(run_dir)


def test_same_seed_twice_gives_identical_metrics(base, uninterrupted, tmp_path):
    run_train(*base, "trainer.max_epochs=4", f"hydra.run.dir={tmp_path}")
    again = read_metrics(tmp_path)
    assert same_numbers(again, uninterrupted), (again, uninterrupted)
    run_train(*base, "trainer.max_epochs=4", "seed=3", f"hydra.run.dir={tmp_path / 'other'}")
    assert read_metrics(tmp_path / "other")["train/loss"] != uninterrupted["train/loss"]


def test_resume_from_last_checkpoint_ends_like_an_uninterrupted_run(base, uninterrupted, tmp_path):
    run_train(*base, "trainer.max_epochs=2", f"hydra.run.dir={tmp_path / 'first'}")
    ckpt = tmp_path / "first" / "checkpoints" / "last.ckpt"
    run_train(
        *base, "trainer.max_epochs=4", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'rest'}"
    )
    resumed = read_metrics(tmp_path / "rest")
    assert resumed["epochs"] == 4
    assert same_numbers(resumed, uninterrupted), (resumed, uninterrupted)


def test_kill_9_then_resume_ends_like_an_uninterrupted_run(base, uninterrupted, tmp_path):
    run_dir = tmp_path / "killed"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    cmd = [
        sys.executable,
        "-m",
        "src.train",
        *base,
        "trainer.max_epochs=4",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "metrics.json").exists(), "the run finished before it could be killed"
    run_train(
        *base, "trainer.max_epochs=4", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'resumed'}"
    )
    assert same_numbers(read_metrics(tmp_path / "resumed"), uninterrupted)


def test_divergence_stops_the_run_with_a_clear_message(base, tmp_path):
    overrides = ("optimizer.lr=1e6", "trainer.log_every_n_steps=8", f"hydra.run.dir={tmp_path}")
    proc = run_train(*base, *overrides, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1
    assert "Traceback" not in output
    metrics = read_metrics(tmp_path)
    assert metrics["status"] == "diverged"
    # Found at the first logging step (the 8th), before it is taken; not at the epoch's end.
    assert metrics["epochs"] == 0 and metrics["steps"] == 7
    step = int(re.search(r"at step (\d+) ", metrics["error"])[1])
    assert 1 <= step <= 8
    assert "learning rate 1e+06" in metrics["error"] and metrics["error"] in output
    assert "test/acc" not in metrics


def write_evil_checkpoint(path):
    """A torch.save archive whose unpickling would create a file (weights-only loading refuses)."""

    class Evil:
        def __reduce__(self):
            return (open, (str(path.parent / "pwned"), "w"))

    torch.save({"state_dict": Evil()}, path)


def truncated_mnist(root):
    make_mnist_files(root)
    images = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    return "train-images-idx3-ubyte is truncated or corrupt"


def corrupt_gz_mnist(root):
    make_mnist_files(root)
    raw = root / "MNIST" / "raw"
    (raw / "t10k-labels-idx1-ubyte").unlink()
    with gzip.open(raw / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"not the official file")
    return "t10k-labels-idx1-ubyte.gz is corrupt: its MD5 is not the official"


BAD_INPUT = {
    "unknown optimizer": (["optimizer=sgdd"], ["Could not find 'optimizer/sgdd'", "adamw"]),
    "wrong type": (["optimizer.lr=abc"], ["optimizer.lr", "'abc'"]),
    "negative lr": (["optimizer.lr=-1"], ["optimizer.lr=-1.0", "must be > 0"]),
    "zero batch": (["data.batch_size=0"], ["data.batch_size=0", "at least 1"]),
    "zero per call": (["model.steps_per_call=0"], ["model.steps_per_call=0", "at least 1"]),
    "val_check_interval": (["trainer.val_check_interval=2.5"], ["trainer.val_check_interval=2.5",
                                                                 "fraction of the epoch"]),
    "limit_train_batches": (["trainer.limit_train_batches=-1"],
                            ["trainer.limit_train_batches=-1", "number of batches"]),
    "accumulate": (["trainer.accumulate_grad_batches=0"], ["trainer.accumulate_grad_batches=0"]),
    "unknown schedule": (["scheduler=cosinee"], ["Could not find 'scheduler/cosinee'", "onecycle"]),
    "unknown trainer flag": (["+trainer.foo=1"], ["trainer.foo is not a setting"]),
    "val too large": (["data.val_size=3000"], ["data.val_size=3000", "3000 images"]),
    "unknown key": (["optimizer.lrr=0.1"], ["optimizer.lrr"]),
    "unknown activation": (["model.net.activation=swish"], ["model.net.activation='swish'",
                                                             "gelu"]),  # fmt: skip
    "missing ckpt": (["ckpt_path=/no/such/last.ckpt"], ["ckpt_path=/no/such/last.ckpt does not"]),
    "not a ckpt": ([f"ckpt_path={REPO / 'README.md'}"], ["not a PyTorch/Lightning checkpoint"]),
    "unsafe ckpt": (["ckpt_path=EVIL"], ["refused by weights-only loading"]),
    "no mnist, no network": (
        ["data.data_dir=EMPTY"],
        ["EMPTY/MNIST/raw", "train-images-idx3-ubyte.gz"],
    ),
    "truncated idx": (["data.data_dir=TRUNCATED"], ["TRUNCATED"]),
    "corrupt gz": (["data.data_dir=CORRUPT"], ["CORRUPT"]),
}


@pytest.mark.parametrize("case", BAD_INPUT, ids=list(BAD_INPUT))
def test_bad_input_is_refused_with_one_message(case, base, tmp_path):
    overrides, expected = BAD_INPUT[case]
    places = {"EMPTY": tmp_path / "empty", "EVIL": tmp_path / "evil.ckpt"}
    places["TRUNCATED"], places["CORRUPT"] = tmp_path / "truncated", tmp_path / "corrupt"
    write_evil_checkpoint(places["EVIL"])
    expected = list(expected)
    if case == "truncated idx":
        expected.append(truncated_mnist(places["TRUNCATED"]))
    if case == "corrupt gz":
        expected.append(corrupt_gz_mnist(places["CORRUPT"]))

    def fill(text):
        for name, path in places.items():
            text = text.replace(name, str(path))
        return text

    run_dir = tmp_path / "run"
    # A dead proxy stands in for a machine without network: torchvision's download fails at once.
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "http_proxy": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "src.train",
            *base,
            *map(fill, overrides),
            f"hydra.run.dir={run_dir}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    for text in expected:
        assert fill(text) in output, output
    assert "Traceback" not in output
    assert not (run_dir / "metrics.json").exists()
    assert not (tmp_path / "pwned").exists()


def test_ddp_on_two_cpu_processes_writes_one_run_with_reduced_metrics(tiny_mnist, tmp_path):
    overrides = ("+experiment=mnist_sgd", f"data.data_dir={tiny_mnist}", "data.val_size=100")
    weights = (
        "+callbacks.rank_weights._target_=tests.rank_weights.RankWeights",
        f"+callbacks.rank_weights.out_dir={tmp_path / 'weights'}",
    )
    proc = run_train(*overrides, *weights, "trainer=ddp_cpu", "trainer.max_epochs=2", cwd=tmp_path)
    # Each step needs its gradients synced: one optimizer step per training_step call.
    assert "one optimizer step per training_step call, as the DDPStrategy" in proc.stdout
    rank0, rank1 = (torch.load(tmp_path / "weights" / f"rank{r}.pt") for r in (0, 1))
    for name, value in rank0.items():  # each rank trained on its own half of the data
        assert torch.equal(value, rank1[name]), name
    run_dirs = list((tmp_path / "outputs" / "runs").glob("*/*"))
    assert len(run_dirs) == 1, run_dirs
    (run_dir,) = run_dirs
    assert len(list(tmp_path.rglob("metrics.json"))) == 1
    metrics = read_metrics(run_dir)
    # 500 training images shared by two ranks: 250 each, 4 batches of 64 per epoch.
    assert metrics["status"] == "completed" and metrics["steps"] == 2 * 4
    assert (run_dir / "train_ddp_process_1.log").is_file()
    # The test accuracy reduced over both ranks equals one process evaluating all 100 images.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "src.eval",
            f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
            f"hydra.run.dir={tmp_path / 'eval'}",
            "trainer.accelerator=cpu",
        ],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
    )
    evaluated = read_metrics(tmp_path / "eval")
    assert evaluated["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert evaluated["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-5)


def test_eval_refuses_a_checkpoint_outside_its_run(tmp_path):
    ckpt = tmp_path / "x.ckpt"
    torch.save({"state_dict": {}}, ckpt)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "src.eval", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'e'}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert ".hydra/config.yaml not found" in proc.stdout + proc.stderr
    assert not (tmp_path / "e" / "metrics.json").exists()


def test_checkpoints_hold_no_pickled_objects(tmp_path):
    """Every checkpoint a run writes loads with weights_only=True, so resuming never needs more."""
    run_train("+experiment=nand", "trainer.max_steps=200", f"hydra.run.dir={tmp_path}")
    for ckpt in (tmp_path / "checkpoints").glob("*.ckpt"):
        torch.load(ckpt, weights_only=True)
    with pytest.raises(pickle.UnpicklingError):
        write_evil_checkpoint(tmp_path / "evil.ckpt")
        torch.load(tmp_path / "evil.ckpt", weights_only=True)
    assert not (tmp_path / "pwned").exists()
