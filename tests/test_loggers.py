"""Each option of the `logger` group, read back with the logger's own library after a tiny run."""

import csv
import math
import subprocess
import sys

import pytest
import yaml
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import REPO, read_metrics, run_train

STEPS, EPOCHS = 8, 2  # tiny MNIST: 500 training images in batches of 64, two epochs


def tiny_mnist_run(data_dir, run_dir, logger: str):
    """Two epochs of the primer's MNIST run on the tiny files, a loss logged at every step."""
    run_train(
        "+experiment=mnist_sgd",
        f"logger={logger}",
        f"data.data_dir={data_dir}",
        "data.val_size=100",
        f"trainer.max_epochs={EPOCHS}",
        "trainer.log_every_n_steps=1",
        f"hydra.run.dir={run_dir}",
    )
    return run_dir


def read_csv(run_dir) -> dict[str, list[tuple[int, int, float]]]:
    """metrics.csv as {metric: [(epoch, step, value), ...]}; a row holds only what was logged
    together, the other cells are empty (epoch is empty on rows logged per step)."""
    (path,) = run_dir.glob("csv/version_*/metrics.csv")  # one run, one version
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    curves: dict[str, list[tuple[int, int, float]]] = {}
    for row in rows:
        epoch = int(row.pop("epoch")) if row["epoch"] else -1
        step = int(row.pop("step"))
        for key, value in row.items():
            if value:
                curves.setdefault(key, []).append((epoch, step, float(value)))
    return curves


@pytest.fixture(scope="module")
def csv_run(tiny_mnist, tmp_path_factory):
    return tiny_mnist_run(tiny_mnist, tmp_path_factory.mktemp("csv_run"), "csv")


@pytest.fixture(scope="module")
def many_run(tiny_mnist, tmp_path_factory):
    return tiny_mnist_run(tiny_mnist, tmp_path_factory.mktemp("many_run"), "many")


@pytest.mark.slow
def test_csv_holds_every_epoch_and_step(csv_run):
    curves = read_csv(csv_run)
    for key in ("train/loss", "train/acc", "val/loss", "val/acc"):
        # Counted from 1, as the console counts them (src/loggers.py).
        assert [epoch for epoch, _, _ in curves[key]] == list(range(1, EPOCHS + 1)), key
        assert all(math.isfinite(value) for _, _, value in curves[key]), key
    assert [step for _, step, _ in curves["train/loss_step"]] == list(range(STEPS * EPOCHS))
    assert len(curves["test/acc"]) == 1
    # The run's record and the CSV agree on where the run ended.
    metrics = read_metrics(csv_run)
    assert metrics["status"] == "completed"
    assert metrics["val/acc"] == pytest.approx(curves["val/acc"][-1][2])
    assert metrics["test/acc"] == pytest.approx(curves["test/acc"][0][2])
    # No TensorBoard logger: the picture callbacks and the HPARAMS writer leave no event file.
    assert not list(csv_run.glob("events.out.tfevents.*"))
    # The settings, counts as numbers (only TensorBoard's HPARAMS needs them as text).
    (hparams,) = csv_run.glob("csv/version_*/hparams.yaml")
    settings = yaml.safe_load(hparams.read_text())
    assert settings["seed"] == 42 and settings["data.batch_size"] == 64
    assert settings["optimizer.lr"] == 0.01 and settings["experiment"] == "mnist_sgd"


@pytest.mark.slow
def test_many_writes_tensorboard_and_csv_alike(many_run):
    events = EventAccumulator(str(many_run), size_guidance={"scalars": 0})
    events.Reload()
    curves = read_csv(many_run)
    for key in ("train/loss", "val/acc", "train/loss_step"):
        board = [(e.step, e.value) for e in events.Scalars(key)]
        table = [(step, value) for _, step, value in curves[key]]
        assert [step for step, _ in board] == [step for step, _ in table], key
        assert [value for _, value in board] == pytest.approx([value for _, value in table]), key
    assert len(curves["val/acc"]) == EPOCHS
    assert events.Tags()["images"], "the picture callbacks still draw into TensorBoard"


@pytest.mark.slow
def test_mlflow_records_the_run_in_its_store(tmp_path, monkeypatch):
    mlflow_tracking = pytest.importorskip("mlflow.tracking", reason="pip install -e .[mlflow]")
    store, run_dir = tmp_path / "mlruns", tmp_path / "run"
    repo_store_existed = (REPO / "mlruns").exists()
    run_train(
        "+experiment=nand",
        "logger=mlflow",
        f"logger.mlflow.tracking_uri=file:{store}",  # never the repository's ./mlruns
        f"trainer.max_epochs={EPOCHS}",
        "trainer.max_steps=-1",
        "data.steps_per_epoch=20",
        "trainer.log_every_n_steps=10",
        f"hydra.run.dir={run_dir}",
    )
    assert (REPO / "mlruns").exists() == repo_store_existed
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # as conf/logger/mlflow.yaml sets it
    client = mlflow_tracking.MlflowClient(f"file:{store}")
    experiment = client.get_experiment_by_name("nand")  # the run's `name`
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == run_dir.name
    assert run.info.status == "FINISHED"
    for key in ("val/acc", "val/loss", "train/loss"):
        history = client.get_metric_history(run.info.run_id, key)
        assert len(history) == EPOCHS, key
        assert all(math.isfinite(m.value) for m in history), key
    assert len(client.get_metric_history(run.info.run_id, "train/loss_step")) == EPOCHS * 20 // 10
    metrics = read_metrics(run_dir)
    assert run.data.metrics["val/loss"] == pytest.approx(metrics["val/loss"])
    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    # The settings a person compares, as TensorBoard's HPARAMS shows them.
    assert run.data.params["experiment"] == "nand"
    assert float(run.data.params["optimizer.lr"]) == config.optimizer.lr
    assert run.data.params["seed"] == "42"  # MLflow keeps every param as text, unquoted
    assert not list(run_dir.glob("events.out.tfevents.*"))


def test_mlflow_missing_stops_in_one_line(tmp_path):
    # The package hidden as if it were not installed; the run itself as `python -m src.train`.
    start = (
        "import runpy, sys; sys.modules['mlflow'] = None; "
        "runpy.run_module('src.train', run_name='__main__', alter_sys=True)"
    )
    run_dir = tmp_path / "run"
    overrides = ["+experiment=nand", "logger=mlflow", f"logger.mlflow.tracking_uri=file:{tmp_path}"]
    proc = subprocess.run(
        [sys.executable, "-c", start, *overrides, f"hydra.run.dir={run_dir}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "Traceback" not in output
    (line,) = [line for line in output.splitlines() if "mlflow" in line.lower()]
    assert line.endswith("logger=mlflow needs MLflow: pip install -e .[mlflow]")
    assert not (run_dir / "metrics.json").exists()
