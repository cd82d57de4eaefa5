"""Hydra multiruns end to end: job directories, the summary, a diverging job, and resuming."""

import csv
import os
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import REPO, read_metrics
from tests.test_train import read_hparams

GRID = ("optimizer=sgd,adam", "optimizer.lr=0.1,0.01")


def run_sweep(tiny_mnist, *overrides, cwd=REPO) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "src.train", "-m", "+experiment=mnist_sgd",
        f"data.data_dir={tiny_mnist}", "data.val_size=100", "trainer.max_epochs=1",
        "trainer.log_every_n_steps=1", *overrides,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def read_summary(sweep_dir):
    with open(sweep_dir / "summary.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def sweep(tiny_mnist, tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("sweep")
    proc = run_sweep(tiny_mnist, *GRID, f"hydra.sweep.dir={sweep_dir}")
    return sweep_dir, proc


def test_every_job_has_its_own_directory_metrics_and_curves(sweep):
    sweep_dir, _ = sweep
    jobs = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir())
    assert jobs == ["0", "1", "2", "3"]
    seen = set()
    for job in jobs:
        metrics = read_metrics(sweep_dir / job)
        assert metrics["status"] == "completed" and metrics["steps"] == 8
        events = EventAccumulator(str(sweep_dir / job), size_guidance={"scalars": 0})
        events.Reload()
        assert len(events.Scalars("train/loss_step")) == 8
        assert len(events.Scalars("val/acc")) == 1
        params, metric_tags = read_hparams(events)
        assert "val/acc" in metric_tags and "test/acc" in metric_tags
        seen.add((params["optimizer._target_"], params["optimizer.lr"]))
    assert seen == {
        ("torch.optim.SGD", 0.1), ("torch.optim.SGD", 0.01),
        ("torch.optim.Adam", 0.1), ("torch.optim.Adam", 0.01),
    }  # fmt: skip


def test_summary_lists_every_job_best_first(sweep):
    sweep_dir, proc = sweep
    rows = read_summary(sweep_dir)
    assert [set(rows[0])] == [
        {"job", "overrides", "val/acc", "test/acc", "train/loss", "fit_seconds", "status"}
    ]
    assert len(rows) == 4
    assert {row["overrides"] for row in rows} == {
        "optimizer=sgd optimizer.lr=0.1", "optimizer=sgd optimizer.lr=0.01",
        "optimizer=adam optimizer.lr=0.1", "optimizer=adam optimizer.lr=0.01",
    }  # fmt: skip
    val_accs = [float(row["val/acc"]) for row in rows]
    assert val_accs == sorted(val_accs, reverse=True)
    for row in rows:
        metrics = read_metrics(sweep_dir / row["job"])
        assert float(row["test/acc"]) == pytest.approx(metrics["test/acc"])
        assert float(row["fit_seconds"]) == pytest.approx(metrics["fit_seconds"])
    table = (sweep_dir / "summary.md").read_text()
    assert table.count("\n") == 2 + 4 and "optimizer=adam optimizer.lr=0.01" in table
    assert table.splitlines()[2] in proc.stdout  # the best row is printed too
    png = (sweep_dir / "summary.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_a_diverging_job_does_not_end_the_sweep(tiny_mnist, tmp_path):
    run_sweep(tiny_mnist, "optimizer.lr=1e6,0.1", f"hydra.sweep.dir={tmp_path}")
    status = {row["overrides"]: row["status"] for row in read_summary(tmp_path)}
    assert status == {"optimizer.lr=1000000.0": "diverged", "optimizer.lr=0.1": "completed"}
    diverged = read_metrics(tmp_path / "0")
    assert diverged["status"] == "diverged" and "learning rate 1e+06" in diverged["error"]
    assert read_metrics(tmp_path / "1")["test/acc"] is not None


def test_a_failing_job_is_recorded_and_the_others_run(tiny_mnist, tmp_path):
    run_sweep(tiny_mnist, "model.net.activation=relu,swish", f"hydra.sweep.dir={tmp_path}")
    failed = read_metrics(tmp_path / "1")
    assert failed["status"] == "failed" and "model.net.activation='swish'" in failed["error"]
    assert read_metrics(tmp_path / "0")["status"] == "completed"
    assert [row["status"] for row in read_summary(tmp_path)] == ["completed", "failed"]


def test_running_a_sweep_again_resumes_it(tiny_mnist, tmp_path):
    sweep_dir = tmp_path / "sweep"
    run_sweep(tiny_mnist, *GRID, f"hydra.sweep.dir={sweep_dir}")
    finished = {job: (sweep_dir / job / "metrics.json") for job in ("0", "1", "2")}
    before = {job: (p.stat().st_mtime_ns, p.read_text()) for job, p in finished.items()}
    ckpts = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("[012]/checkpoints/*.ckpt")}
    (sweep_dir / "3" / "metrics.json").unlink()  # as if job 3 had been killed
    (sweep_dir / "summary.csv").unlink()

    run_sweep(tiny_mnist, *GRID, f"hydra.sweep.dir={sweep_dir}")
    after = {job: (p.stat().st_mtime_ns, p.read_text()) for job, p in finished.items()}
    assert after == before  # finished jobs are not trained again
    assert {p: p.stat().st_mtime_ns for p in ckpts} == ckpts
    assert read_metrics(sweep_dir / "3")["status"] == "completed"
    assert len(read_summary(sweep_dir)) == 4


def test_joblib_launcher_and_two_sweeps_at_once(tmp_path, tiny_mnist):
    """Two sweeps started together, each with two parallel jobs: four directories, no clash."""
    cmd = [
        sys.executable, "-m", "src.train", "-m", "+experiment=nand", "data.steps_per_epoch=50",
        "trainer.max_steps=50",
        "seed=1,2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for _ in range(2)
    ]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stdout.read()
    sweeps = sorted((tmp_path / "outputs" / "multirun").glob("*/*"))
    assert len(sweeps) == 2
    for sweep_dir in sweeps:
        assert [read_metrics(sweep_dir / job)["seed"] for job in ("0", "1")] == [1, 2]
        assert len(read_summary(sweep_dir)) == 2


def test_optuna_search_returns_the_optimized_metric(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable, "-m", "src.train", "-m", "+experiment=nand", "hparams_search=nand_optuna",
        "hydra.sweeper.n_trials=2", "data.steps_per_epoch=100", "trainer.max_steps=100",
        f"hydra.sweep.dir={tmp_path}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = (tmp_path / "optimization_results.yaml").read_text()
    best = min(read_metrics(tmp_path / job)["val/loss"] for job in ("0", "1"))
    assert f"best_value: {best}" in results
