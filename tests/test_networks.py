"""Any network by config: every shipped network and experiment trains, checkpoints with plain
values only, and comes back for src.eval and src.predict; a network that does not fit the task is
refused in one line; a user's own network from a file of theirs trains with one command."""

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.config import register, validate
from src.eval import evaluate
from src.predict import predict
from src.train import train
from tests.conftest import PYTHON, REPO, read_metrics

pytestmark = pytest.mark.slow  # every test here trains
GATE_NETS = ("logic_gate", "linear_gate")  # the others are digit networks

NETS = sorted(p.stem for p in (REPO / "conf/model/net").glob("*.yaml") if p.stem != "custom")
EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))


def compose_config(name: str, *overrides: str):
    register()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose(name, overrides=list(overrides))


def short(experiment: str, data_dir: Path) -> tuple[str, ...]:
    """A few steps of the experiment, with a validation and a checkpoint."""
    if experiment.startswith(("nand", "xor")):
        return ("data.steps_per_epoch=5", "trainer.max_steps=5")
    return (f"data.data_dir={data_dir}", "data.val_size=100", "trainer.max_epochs=1",
            "trainer.limit_train_batches=3")  # fmt: skip


def digit_pngs(folder: Path, count: int = 3) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        image = np.zeros((40, 30), dtype=np.uint8)
        image[5:35, 12 + i : 16 + i] = 255  # a stroke, something like a 1
        image = np.clip(image + rng.integers(0, 20, image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(folder / f"digit{i}.png")
    return folder


def train_eval_predict(tmp_path: Path, *overrides: str) -> dict:
    run_dir = tmp_path / "run"
    cfg = compose_config("train", *overrides, f"paths.output_dir={run_dir}")
    validate(cfg)
    run_dir.mkdir()
    record = train(cfg, run_dir, overrides=[])
    assert record["status"] == "completed", record
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(ckpt, weights_only=True)  # plain containers and tensors only
    assert checkpoint["global_step"] == record["steps"]
    # The run's config is where src.eval and src.predict find the network.
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    eval_cfg = compose_config("eval", f"ckpt_path={ckpt}", f"paths.output_dir={tmp_path / 'e'}",
                              "trainer.accelerator=cpu")  # fmt: skip
    (tmp_path / "e").mkdir()
    evaluated = evaluate(eval_cfg, tmp_path / "e")
    assert 0 <= evaluated["test/acc"] <= 1 and evaluated["test/loss"] >= 0
    if cfg.model._target_.endswith("DigitModule"):
        found = predict(ckpt, digit_pngs(tmp_path / "digits"))
        assert [f.name for f, _, _ in found] == ["digit0.png", "digit1.png", "digit2.png"]
        assert all(0 <= d <= 9 and 0.1 <= p <= 1 for _, d, p in found)
    return record


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_checkpoints_and_comes_back(experiment, tiny_mnist, tmp_path):
    train_eval_predict(tmp_path, f"+experiment={experiment}", *short(experiment, tiny_mnist))


@pytest.mark.parametrize("net", NETS)
def test_every_network_checkpoints_and_comes_back(net, tiny_mnist, tmp_path):
    experiment = "nand" if net in GATE_NETS else "mnist_sgd"
    train_eval_predict(tmp_path, f"+experiment={experiment}", f"model/net={net}",
                       *short(experiment, tiny_mnist))  # fmt: skip


NET_FILE = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    """A user's own network: one convolution, global pooling, a linear read-out."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 5, stride=2)
        self.read = nn.Linear(width, 10)

    def forward(self, x):
        return self.read(self.conv(x).relu().mean(dim=(2, 3)))


class FiveLogits(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(784, 5)

    def forward(self, x):
        return self.linear(x.flatten(1))
'''


def run_module(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([*PYTHON, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_a_network_from_a_file_of_ones_own(tiny_mnist, tmp_path):
    """From the directory holding my_net.py, as a user runs it from the repository root."""
    (tmp_path / "my_net.py").write_text(NET_FILE)
    proc = run_module(
        "src.train", "+experiment=mnist_sgd", "model/net=custom",
        "model.net._target_=my_net.TinyNet", "+model.net.width=6", f"data.data_dir={tiny_mnist}",
        "data.val_size=100", "trainer.max_epochs=1", "hydra.run.dir=run", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert read_metrics(tmp_path / "run")["status"] == "completed"
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert {"net.conv.weight", "net.read.weight"} <= set(
        torch.load(ckpt, weights_only=True)["state_dict"]
    )
    # Its first layer is a convolution of the image: its filters are drawn, 6 of 5×5.
    events = EventAccumulator(str(tmp_path / "run"), size_guidance={"images": 0})
    events.Reload()
    assert "pictures/first_layer_weights" in events.Tags()["images"]
    # A run folder's config builds a class of one's own only when its module is allowed.
    refused = run_module("src.eval", f"ckpt_path={ckpt}", "hydra.run.dir=eval", cwd=tmp_path)
    assert refused.returncode == 2 and "allow=[my_net]" in refused.stdout
    evaluated = run_module("src.eval", f"ckpt_path={ckpt}", "allow=[my_net]", "hydra.run.dir=eval",
                           cwd=tmp_path)  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    assert read_metrics(tmp_path / "eval")["test/acc"] == pytest.approx(
        read_metrics(tmp_path / "run")["test/acc"]
    )
    digit_pngs(tmp_path / "digits")
    predicted = run_module("src.predict", f"ckpt_path={ckpt}", "input=digits", "allow=[my_net]",
                           cwd=tmp_path)  # fmt: skip
    assert predicted.returncode == 0, predicted.stdout + predicted.stderr
    assert predicted.stdout.count(" prediction: ") == 3


def test_a_network_that_does_not_fit_the_task_is_refused_in_one_line(tmp_path):
    (tmp_path / "my_net.py").write_text(NET_FILE)
    cases = {
        "my_net.FiveLogits": "gives outputs of shape (2, 5) for a batch of shape (2, 1, 28, 28); "
        "this task needs (2, 10)",
        "src.models.LogicGateNet": "cannot take a batch of shape (2, 1, 28, 28)",
    }
    for target, message in cases.items():
        gate = "Gate" in target
        extra = ["+model.net.hidden_dim=3", "+model.net.activation=relu"] if gate else []
        proc = run_module("src.train", "+experiment=mnist_sgd", "model/net=custom",
                          f"model.net._target_={target}", *extra, "hydra.run.dir=run",
                          cwd=tmp_path)  # fmt: skip
        output = proc.stdout + proc.stderr
        assert proc.returncode == 2, output
        assert f"model.net ({target}): " in output and message in output, output
        assert "Traceback" not in output
        assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_network_with_no_first_layer_of_pixels_draws_no_weight_picture(tiny_mnist, tmp_path):
    """An MLP with no hidden layer still has a 784-input layer; a CNN has its filters; a net
    whose first layer does not see the image (here: a linear layer after pooling) has neither."""
    (tmp_path / "pooled.py").write_text(
        "from torch import nn\n\n\nclass Pooled(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n"
        "        self.read = nn.Linear(49, 10)\n\n"
        "    def forward(self, x):\n"
        "        return self.read(nn.functional.avg_pool2d(x, 4).flatten(1))\n"
    )
    proc = run_module("src.train", "+experiment=mnist_sgd", "model/net=custom",
                      "model.net._target_=pooled.Pooled", f"data.data_dir={tiny_mnist}",
                      "data.val_size=100", "trainer.max_epochs=1", "hydra.run.dir=run",
                      cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    events = EventAccumulator(str(tmp_path / "run"), size_guidance={"images": 0})
    events.Reload()
    images = events.Tags()["images"]
    assert "pictures/first_layer_weights" not in images
    assert "pictures/confusion_matrix" in images
