"""End-to-end runs of `python -m src.train` in subprocesses, read back from the files they leave."""

import math
import subprocess
from datetime import datetime
from subprocess import PIPE

import pytest
import torch
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from torch import nn

from src.checkpoints import load_run
from src.config import register
from src.eval import evaluate
from tests.conftest import PYTHON, REPO, read_metrics, run_train

pytestmark = pytest.mark.slow  # every test here trains

TINY = ("data.val_size=100", "trainer.log_every_n_steps=1")


def load_events(run_dir):
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return events


def read_hparams(events) -> dict:
    """The run's settings as TensorBoard's HPARAMS tab reads them (its session start info)."""
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    return {
        key: getattr(value, value.WhichOneof("kind"))
        for key, value in start.session_start_info.hparams.items()
    }


SHARED_RUNS = ("mnist_run",)  # runs several tests read: each made once (conftest.py)


@pytest.fixture(scope="module")
def mnist_run(tiny_mnist, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("mnist_run")
    proc = run_train(
        "+experiment=mnist_sgd",
        f"data.data_dir={tiny_mnist}",
        "trainer.max_epochs=2",
        f"hydra.run.dir={run_dir}",
        *TINY,
    )
    return run_dir, proc


def test_mnist_run_records_metrics_and_files(mnist_run):
    run_dir, proc = mnist_run
    metrics = read_metrics(run_dir)
    for key in ("train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc"):
        assert 0 <= metrics[key] < 10, key
    for key in ("train/acc", "val/acc", "test/acc"):
        assert metrics[key] <= 1
    assert metrics["status"] == "completed"
    assert (metrics["seed"], metrics["epochs"], metrics["steps"]) == (42, 2, 2 * 8)
    assert 0 < metrics["train_seconds"] < metrics["fit_seconds"] < 300
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert len(list((run_dir / "checkpoints").glob("best-epoch*.ckpt"))) == 1
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    log = (run_dir / "train.log").read_text()
    # The fit took no longer than from the seed to the test's first line: the test's read of the
    # last checkpoint adds no earlier time.
    lines = [line for line in log.splitlines() if line.startswith("[")]
    seeded = next(line for line in lines if "Seed set" in line)
    fitted = next(line for line in lines if "Restoring states from the checkpoint" in line)
    took = (datetime.strptime(fitted[1:24], "%Y-%m-%d %H:%M:%S,%f")
            - datetime.strptime(seeded[1:24], "%Y-%m-%d %H:%M:%S,%f")).total_seconds()  # fmt: skip
    assert metrics["fit_seconds"] <= took
    assert "results:" in log
    # The model summary the console shows is in the log too, once in each.
    assert log.count("101 K     Trainable params") == proc.stdout.count("Trainable params") == 1
    # The primer-style table and the run directory are the last things printed.
    assert f"run directory: {run_dir}" in proc.stdout
    assert "epoch       loss  train acc   val loss    val acc" in proc.stdout
    assert f"test/acc: {100 * metrics['test/acc']:.2f} %" in proc.stdout


def test_tensorboard_reads_back_every_curve(mnist_run):
    run_dir, _ = mnist_run
    events = load_events(run_dir)
    counts = {tag: len(events.Scalars(tag)) for tag in events.Tags()["scalars"]}
    steps, epochs = 16, 2  # 500 training images in batches of 64, two epochs
    assert counts["train/loss_step"] == steps
    assert counts["train/loss"] == counts["train/acc"] == epochs
    assert counts["val/loss"] == counts["val/acc"] == epochs

    # One x-axis for all: Lightning's, where a value sits at the number of steps before it.
    # The 8 steps of an epoch run in one training_step call, yet each gets its own point.
    def xs(tag):
        return [event.step for event in events.Scalars(tag)]

    assert xs("train/loss_step") == list(range(steps))
    assert xs("train/loss") == xs("train/acc") == xs("val/acc") == [7, 15]
    assert xs("train/lr") == [0, 8]
    assert counts["test/loss"] == counts["test/acc"] == 1
    assert "hp_metric" not in counts
    metrics = read_metrics(run_dir)
    assert events.Scalars("val/acc")[-1].value == pytest.approx(metrics["val/acc"])
    assert events.Scalars("test/acc")[-1].value == pytest.approx(metrics["test/acc"])


def test_hparams_hold_the_chosen_settings_with_their_types(mnist_run):
    """What a person compares, counts as whole numbers, the row named as the run, and no
    experiment summary: TensorBoard then takes every run's columns, not the first run's."""
    run_dir, _ = mnist_run
    events = load_events(run_dir)
    start = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    )
    assert start.session_start_info.group_name == f"{run_dir.name} in {run_dir.resolve().parent}"
    assert read_hparams(events) == {
        "experiment": "mnist_sgd", "seed": "42", "trainer.max_epochs": "2",
        "model.net": "DigitClassifier", "model.net.hidden_dim": "128",
        "model.net.activation": "relu",
        "data.dataset": "mnist", "data.batch_size": "64", "data.val_size": "100",
        "data.normalize": False,
        "optimizer": "SGD", "optimizer.lr": 0.01, "optimizer.momentum": 0.0,
        "optimizer.weight_decay": 0.0, "optimizer.dampening": 0.0, "optimizer.nesterov": False,
        "scheduler": "ConstantLR", "scheduler.factor": 1.0, "scheduler.total_iters": "0",
    }  # fmt: skip
    assert "_hparams_/experiment" not in events.PluginTagToContent("hparams")
    metrics = read_metrics(run_dir)
    for tag in ("train/loss", "val/acc", "test/acc"):  # the tab shows each curve's last value
        assert events.Scalars(tag)[-1].value == pytest.approx(metrics[tag]), tag


def test_tensorboard_layout_puts_train_and_val_on_one_chart(mnist_run):
    from tensorboard.plugins.custom_scalar import layout_pb2

    run_dir, _ = mnist_run
    events = load_events(run_dir)
    (tag,) = events.PluginTagToContent("custom_scalars")
    (layout,) = events.Tensors(tag)
    charts = {
        chart.title: list(chart.multiline.tag)
        for category in layout_pb2.Layout.FromString(layout.tensor_proto.string_val[0]).category
        for chart in category.chart
    }
    assert charts == {
        "loss": [r"^(train|val)/loss$"],
        "accuracy": [r"^(train|val)/acc$"],
        "learning rate": [r"^train/lr"],
    }
    tags = events.Tags()["scalars"]
    # Lightning's epoch counter, a staircase of the step axis, is no chart.
    assert "epoch" not in tags and "train/epoch" not in tags and "train/lr" in tags


def test_runs_started_together_get_their_own_directories(tmp_path):
    cmd = [*PYTHON, "-m", "src.train", "+experiment=nand", "trainer.max_steps=20"]
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    procs = [
        subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=PIPE)
        for _ in range(2)
    ]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    run_dirs = sorted((tmp_path / "outputs" / "runs").glob("*/*_nand_*"))
    assert len(run_dirs) == 2
    assert all(read_metrics(d)["steps"] == 20 for d in run_dirs)


def plain_nand(seed: int, steps: int = 4000) -> nn.Sequential:
    """The primer's NAND training as a plain PyTorch loop."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(2, 3), nn.Sigmoid(), nn.Linear(3, 1), nn.Sigmoid())
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    y = torch.tensor([[1.0], [1.0], [1.0], [0.0]])
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    for _ in range(steps):
        loss = nn.functional.mse_loss(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net


def test_nand_learns_its_table_and_matches_a_plain_loop(tmp_path):
    run_train("+experiment=nand", "seed=7", f"hydra.run.dir={tmp_path}")
    metrics = read_metrics(tmp_path)
    assert metrics["steps"] == 4000
    assert metrics["test/acc"] == 1.0  # every output rounds to its truth value
    assert metrics["test/loss"] < 0.01
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    reference = plain_nand(seed=7).state_dict()
    ours = {
        "0.weight": state["net.hidden.weight"],
        "0.bias": state["net.hidden.bias"],
        "2.weight": state["net.out.weight"],
        "2.bias": state["net.out.bias"],
    }
    for key, value in reference.items():
        torch.testing.assert_close(ours[key], value, rtol=0, atol=1e-6)


def test_xor_learns_its_table(tmp_path):
    run_train("+experiment=xor", f"hydra.run.dir={tmp_path}")
    metrics = read_metrics(tmp_path)
    assert metrics["test/acc"] == 1.0
    assert metrics["test/loss"] < 0.01


def test_no_single_linear_unit_learns_xor():
    """Why the XOR experiment needs its hidden layer: a lone sigmoid unit stays near MSE 0.25."""
    torch.manual_seed(0)
    unit = nn.Sequential(nn.Linear(2, 1), nn.Sigmoid())
    x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    y = torch.tensor([[0.0], [1.0], [1.0], [0.0]])
    optimizer = torch.optim.SGD(unit.parameters(), lr=1.0)
    for _ in range(4000):
        loss = nn.functional.mse_loss(unit(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() > 0.2
    assert ((unit(x) > 0.5).float() == y).float().mean() < 1


@pytest.mark.parametrize(
    ("experiment", "low", "high"), [("mnist_sgd", 0.90, 0.925), ("mnist_adam", 0.97, 1.0)]
)
def test_real_mnist_reproduces_the_primer_protocol(real_mnist, tmp_path, experiment, low, high):
    run_train(
        f"+experiment={experiment}", f"data.data_dir={real_mnist}", f"hydra.run.dir={tmp_path}"
    )
    metrics = read_metrics(tmp_path)
    assert metrics["epochs"] == 5 and metrics["steps"] == 5 * 860  # 55,000 images, batch 64
    assert low <= metrics["test/acc"] <= high


def test_cosine_schedule_runs_from_the_learning_rate_to_zero_over_the_run(tiny_mnist, tmp_path):
    run_train("+experiment=mnist_sgd", f"data.data_dir={tiny_mnist}", "trainer.max_epochs=2",
              "scheduler=cosine", f"hydra.run.dir={tmp_path}", *TINY)  # fmt: skip
    lr = load_events(tmp_path).Scalars("train/lr")
    # Logged before each of the 16 steps (log_every_n_steps=1), as LearningRateMonitor does.
    assert [e.step for e in lr] == list(range(16))
    assert lr[0].value == pytest.approx(0.01)
    assert lr[-1].value == pytest.approx(0.01 * (1 + math.cos(math.pi * 15 / 16)) / 2)
    assert lr[-1].value < 1e-4 and all(a.value > b.value for a, b in zip(lr, lr[1:], strict=False))


def test_ddp_on_three_processes_counts_every_image_once(tiny_mnist, tmp_path):
    """100 validation and 100 test images over 3 ranks. Lightning's own DistributedSampler would
    pad each set to 102 (two images read twice); every image must count once, so that the numbers
    are those of one process reading the whole set. Batches of 11 cut the ranks' shares of 33, 33
    and 34 images into 3, 3 and 4 batches: the ranks end their loops at different steps. The
    run is one: one directory, one record, the ranks' weights equal at the end."""
    run_train("+experiment=mnist_sgd", f"data.data_dir={tiny_mnist}", "data.val_size=100",
              "data.eval_batch_size=11", "trainer=ddp_cpu", "trainer.devices=3",
              "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'run'}",
              "+callbacks.rank_weights._target_=tests.rank_weights.RankWeights",
              f"+callbacks.rank_weights.out_dir={tmp_path / 'weights'}", cwd=tmp_path)  # fmt: skip
    ranks = [torch.load(tmp_path / "weights" / f"rank{r}.pt") for r in range(3)]
    for name, value in ranks[0].items():  # each rank trained on its own third of the data
        assert torch.equal(value, ranks[1][name]) and torch.equal(value, ranks[2][name]), name
    (record,) = tmp_path.rglob("metrics.json")
    run_dir = record.parent
    assert run_dir == tmp_path / "run" and not (tmp_path / "outputs").exists()
    assert (run_dir / "train_ddp_process_1.log").is_file()
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "completed" and metrics["tested"] == "checkpoints/last.ckpt"
    # 500 training images shared by three ranks: 167 each (padded), 3 batches of 64.
    assert metrics["steps"] == 3
    ckpt = run_dir / "checkpoints" / "last.ckpt"

    # The tested checkpoint counted by hand over every image once (validation ran on the same
    # weights, at the end of the one epoch).
    module, datamodule, _ = load_run(ckpt)
    datamodule.setup()
    for stage, split in (("val", datamodule.val_set), ("test", datamodule.test_set)):
        x, y = split.tensors
        with torch.no_grad():
            out = module(x)
        assert len(y) == 100
        accuracy = (out.argmax(dim=1) == y).double().mean().item()
        assert metrics[f"{stage}/acc"] == pytest.approx(accuracy, abs=1e-6), stage
        loss = nn.functional.cross_entropy(out, y).item()
        assert metrics[f"{stage}/loss"] == pytest.approx(loss, rel=1e-5), stage

    # src.eval of that checkpoint, in one process, gives the run's test numbers again.
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    register()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        eval_cfg = compose("eval", overrides=[f"ckpt_path={ckpt}", f"paths.output_dir={eval_dir}",
                                              "trainer.accelerator=cpu"])  # fmt: skip
    evaluated = evaluate(eval_cfg, eval_dir)
    assert evaluated["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    for key in ("test/loss", "test/ece"):
        assert evaluated[key] == pytest.approx(metrics[key], rel=1e-5), key

    # A Trainer value Lightning refuses is one line naming the key there too, exit status 2.
    proc = subprocess.run([*PYTHON, "-m", "src.eval", f"ckpt_path={ckpt}", "trainer.devices=0",
                           f"hydra.run.dir={tmp_path / 'refused'}"], cwd=REPO,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1].endswith(
        "trainer.devices (lightning.pytorch.Trainer): `Trainer(devices=0)` value is not a valid "
        "input using cpu accelerator."
    ), proc.stdout
