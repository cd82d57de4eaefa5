"""The primer's lessons (docs/lessons.md): each preset composed and run at a tiny size through the
real code, and its finding asserted where a tiny run can show it. Lessons 6 and 7 (the first
loss, calibration) are in test_first_loss_and_calibration.py."""

import csv
import math

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from src.checkpoints import read_checkpoint
from src.config import register
from tests.conftest import REPO, read_metrics, run_train

pytestmark = pytest.mark.slow


def tiny(tiny_mnist, *overrides: str) -> tuple[str, ...]:
    """Overrides that shrink an MNIST preset to the 600-image fixture and one epoch."""
    return (f"data.data_dir={tiny_mnist}", "data.val_size=100", "trainer.max_epochs=1", *overrides)


def composed(*overrides: str):
    """The config a command line with these overrides composes, Hydra's own part included."""
    register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def summary(sweep_dir) -> list[dict]:
    with open(sweep_dir / "summary.csv") as file:
        return list(csv.DictReader(file))


def test_lesson_1_lr_find_saves_its_plot_and_changes_nothing(tiny_mnist, tmp_path):
    runs = {}
    for find in ("false", "true"):
        run_dir = tmp_path / find
        proc = run_train("+experiment=mnist_sgd", *tiny(tiny_mnist), f"lr_find={find}",
                         f"hydra.run.dir={run_dir}")  # fmt: skip
        assert "`weights_only` was not set" not in proc.stdout  # the finder's own checkpoint
        runs[find] = read_metrics(run_dir)
    found = runs["true"]["lr_find"]
    assert found["plot"] == "lr_find.png" and (tmp_path / "true" / "lr_find.png").stat().st_size
    assert found["suggestion"] is None or 1e-5 <= found["suggestion"] <= 10
    assert "lr_find" not in runs["false"]
    for key in ("val/loss", "test/acc", "steps"):  # the finder worked on a copy
        assert runs["true"][key] == runs["false"][key], key
    weights = [read_checkpoint(tmp_path / f / "checkpoints" / "last.ckpt")["state_dict"]
               for f in ("false", "true")]  # fmt: skip
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_lesson_1_lr_range_marks_diverged_jobs(tiny_mnist, tmp_path):
    cfg = composed("+experiment=mnist_sgd", "+sweep=lr_range")
    rates = [float(r) for r in cfg.hydra.sweeper.params["optimizer.lr"].split(",")]
    assert (rates[0], rates[-1], len(rates), cfg.trainer.max_epochs) == (1e-4, 10, 11, 1)
    steps = [math.log10(b / a) for a, b in zip(rates, rates[1:], strict=False)]
    assert all(0.45 < s < 0.53 for s in steps)  # log-spaced, 1 and 3 per decade
    # Three of its rates, the last far past divergence, without -m: the preset is a sweep.
    run_train("+experiment=mnist_sgd", "+sweep=lr_range", *tiny(tiny_mnist),
              "optimizer.lr=0.01,1,1000000",  # replaces the preset's list
              f"hydra.sweep.dir={tmp_path}")  # fmt: skip
    rows = summary(tmp_path)
    assert [row["status"] for row in rows] == ["completed", "completed", "diverged"]
    assert list(rows[0])[1] == "val/loss"  # ranked by the preset's metric
    assert rows[-1]["overrides"] == "optimizer.lr=1000000" and rows[-1]["val/loss"] == ""
    assert (tmp_path / "summary.png").stat().st_size > 10_000


def test_lesson_2_activations_run_each_nonlinearity(tiny_mnist, tmp_path):
    run_train("+experiment=mnist_sgd", "+sweep=activations", *tiny(tiny_mnist),
              f"hydra.sweep.dir={tmp_path}")  # fmt: skip
    rows = summary(tmp_path)
    assert {row["overrides"] for row in rows} == {
        f"model.net.activation={name}" for name in ("sigmoid", "tanh", "relu", "gelu", "leaky_relu")
    }
    assert all(row["status"] == "completed" for row in rows)
    assert len({row["val/acc"] for row in rows}) > 1  # the nonlinearity made a difference


def test_lesson_3_depth_and_width_at_one_budget(tiny_mnist, tmp_path):
    run_train("+experiment=mnist_sgd", "+sweep=depth_width", *tiny(tiny_mnist),
              f"hydra.sweep.dir={tmp_path}")  # fmt: skip
    params = {row["overrides"]: int(row["parameters"]) for row in summary(tmp_path)}
    assert params == {
        "model.net.hidden_dims=[126]": 100_180,
        "model.net.hidden_dims=[112,112]": 101_706,
        "model.net.hidden_dims=[100,100,100]": 99_710,
    }
    assert all(float(row["epoch_seconds"]) > 0 for row in summary(tmp_path))


def test_lesson_4_xor_needs_a_hidden_layer(tmp_path):
    run_train("+experiment=xor_linear", f"hydra.run.dir={tmp_path}")
    linear = read_metrics(tmp_path)
    assert linear["parameters"] == 3
    # No line separates XOR's classes: the mean squared error stays far above the 2 → 4 → 1
    # net's (below 0.01: test_train.py's test_xor_learns_its_table).
    assert linear["test/loss"] > 0.1 and linear["test/acc"] <= 0.75


def test_lesson_5_normalization_runs_both(tiny_mnist, tmp_path):
    run_train("+experiment=mnist_sgd", "+sweep=normalize", *tiny(tiny_mnist),
              f"hydra.sweep.dir={tmp_path}")  # fmt: skip
    rows = {row["overrides"]: row for row in summary(tmp_path)}
    assert set(rows) == {"data.normalize=False", "data.normalize=True"}  # as Hydra writes them
    assert rows["data.normalize=True"]["val/acc"] != rows["data.normalize=False"]["val/acc"]


def test_lesson_8_overfitting_trains_on_a_small_subset(tiny_mnist, tmp_path):
    cfg = composed("+experiment=mnist_adam", "+sweep=overfitting")
    assert (cfg.data.train_size, cfg.trainer.max_epochs) == (1000, 50)
    run_train(
        "+experiment=mnist_adam",
        "+sweep=overfitting",
        *tiny(tiny_mnist),
        "data.train_size=100",
        "trainer.max_epochs=3",
        f"hydra.sweep.dir={tmp_path}",
    )
    rows = summary(tmp_path)
    assert {row["overrides"] for row in rows} == {
        f"optimizer.weight_decay={wd}" for wd in ("0", "0.001", "0.01")
    }
    for row in rows:  # 100 images in batches of 64: 2 steps per epoch
        assert read_metrics(tmp_path / row["job"])["steps"] == 2 * 3
