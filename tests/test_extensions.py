"""What a user adds without touching the project: a dataset for the gate nets, or a network, as
one .py and one .yaml in a config folder of their own, trained by the real `python -m src.train`
from the folder holding the .py, with its pictures, and listed by `--help`; a wrong value in it
refused in one line."""

import os
import subprocess
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import PYTHON, REPO, make_mnist_files, read_metrics

# Two interleaved half circles, as scikit-learn's make_moons draws them: 2 features, a 0/1 target
# of shape (B, 1), as the gates' data gives them.
MOONS_PY = """
import math

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset


class TwoMoons(L.LightningDataModule):
    def __init__(self, samples: int, noise: float, batch_size: int):
        super().__init__()
        if noise < 0:
            raise ValueError(f"noise must be >= 0, not {noise}")
        generator = torch.Generator().manual_seed(0)
        angle = torch.rand(samples, generator=generator) * math.pi
        upper = torch.arange(samples) % 2 == 0
        x1 = torch.where(upper, angle.cos(), 1 - angle.cos())
        x2 = torch.where(upper, angle.sin(), 0.5 - angle.sin())
        x = torch.stack([x1, x2], dim=1) + noise * torch.randn(samples, 2, generator=generator)
        self.data = TensorDataset(x, upper.float().unsqueeze(1))
        self.batch_size = batch_size

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.data, batch_size=len(self.data))

    def test_dataloader(self):
        return self.val_dataloader()
"""

MOONS_YAML = """\
_target_: moons.TwoMoons
samples: 256
noise: 0.1
batch_size: 8
"""


NET_PY = """
from torch import nn


class WideGate(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(2, width), nn.Tanh(), nn.Linear(width, 1), nn.Sigmoid()
        )

    def forward(self, x):
        return self.layers(x)
"""


def run_module(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m <module> <args>` as a user runs it from `cwd`: Hydra's short errors."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([*PYTHON, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.fixture
def moons(tmp_path) -> Path:
    """tmp_path holding moons.py, and conf/data/moons.yaml naming its class."""
    (tmp_path / "moons.py").write_text(MOONS_PY)
    (tmp_path / "conf" / "data").mkdir(parents=True)
    (tmp_path / "conf" / "data" / "moons.yaml").write_text(MOONS_YAML)
    return tmp_path


@pytest.fixture
def wide_gate(tmp_path) -> Path:
    """tmp_path holding wide_gate.py, and conf/model/net/wide_gate.yaml naming its class."""
    (tmp_path / "wide_gate.py").write_text(NET_PY)
    (tmp_path / "conf" / "model" / "net").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "net" / "wide_gate.yaml").write_text(
        "_target_: wide_gate.WideGate\nwidth: 6\n"
    )
    return tmp_path


def images(run_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    events.Reload()
    return events


@pytest.mark.slow
def test_a_dataset_of_ones_own_trains_the_gate_nets_and_draws_their_pictures(moons):
    # The xor experiment's net, loss and optimizer on the moons: it sets no key of the data.
    proc = run_module("src.train", "--config-dir", "conf", "+experiment=xor", "data=moons",
                      "trainer.max_epochs=4", "hydra.run.dir=run", cwd=moons)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = read_metrics(moons / "run")
    assert metrics["status"] == "completed", metrics
    assert metrics["epochs"] == 4 and metrics["steps"] == 4 * 256 // 8
    assert metrics["parameters"] == (2 * 4 + 4) + (4 + 1)  # 2 → 4 → 1
    # Validation and test read the same 256 points; both of the last epoch's weights.
    assert metrics["test/loss"] == pytest.approx(metrics["val/loss"], rel=1e-5)
    assert metrics["test/acc"] == pytest.approx(metrics["val/acc"])
    # It learns: from about 0.24 untrained to 0.12, and 85 % of the points on their side.
    assert metrics["test/loss"] < 0.15 and metrics["test/acc"] > 0.8
    events = images(moons / "run")
    surfaces = events.Images("pictures/output_surface")
    assert [image.step for image in surfaces] == [0, 32, 64, 96, 128]  # the start, each epoch's end
    assert all(image.width == 450 and image.height == 400 for image in surfaces)
    (hidden,) = events.Images("pictures/hidden_activations")
    # 8 of the 256 inputs, 4 units: a row of 50 pixels each below a 100-pixel margin.
    assert hidden.step == 128 and hidden.height == 100 + 8 * 50 and hidden.width == 120 + 4 * 70


@pytest.mark.parametrize(("wrong", "said"), [
    ("data.noise=-1", "data (moons.TwoMoons): noise must be >= 0, not -1"),
    ("+data.gate=xor", "data (moons.TwoMoons): TwoMoons.__init__() got an unexpected keyword "
                       "argument 'gate'"),
])  # fmt: skip
def test_a_wrong_value_of_ones_own_dataset_is_refused_in_one_line(moons, wrong, said):
    proc = run_module("src.train", "--config-dir", "conf", "+experiment=xor", "data=moons", wrong,
                      "hydra.run.dir=run", cwd=moons)  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].endswith(f"[ERROR] - {said}"), output
    assert not (moons / "run").exists()  # refused: no run directory left behind


@pytest.mark.slow
def test_a_network_of_ones_own_trains_as_a_named_option_and_draws_its_pictures(wide_gate):
    proc = run_module("src.train", "--config-dir", "conf", "+experiment=nand",
                      "model/net=wide_gate", "data.steps_per_epoch=100", "trainer.max_steps=200",
                      "hydra.run.dir=run", cwd=wide_gate)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = read_metrics(wide_gate / "run")
    assert metrics["status"] == "completed", metrics
    assert metrics["steps"] == 200 and metrics["epochs"] == 2
    assert metrics["parameters"] == (2 * 6 + 6) + (6 + 1)  # 2 → 6 → 1
    assert metrics["test/loss"] < metrics["first_loss"]
    assert metrics["test/loss"] == pytest.approx(metrics["val/loss"], rel=1e-5)
    events = images(wide_gate / "run")
    assert [image.step for image in events.Images("pictures/output_surface")] == [0, 100, 200]
    (hidden,) = events.Images("pictures/hidden_activations")
    assert hidden.step == 200 and hidden.width == 120 + 6 * 70 and hidden.height == 100 + 4 * 50


def test_a_wrong_value_of_ones_own_network_is_refused_in_one_line(wide_gate):
    proc = run_module("src.train", "--config-dir", "conf", "+experiment=nand",
                      "model/net=wide_gate", "+model.net.depth=2", "hydra.run.dir=run",
                      cwd=wide_gate)  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    lines = [line for line in output.splitlines() if line.strip()]
    said = "model.net (wide_gate.WideGate): WideGate.__init__() got an unexpected keyword argument"
    assert len(lines) == 1 and lines[0].endswith(f"[ERROR] - {said} 'depth'"), output
    assert not (wide_gate / "run").exists()


def test_help_lists_the_options_of_ones_own_config_folder(moons, wide_gate):
    """The project's help file names no option: each group's line is read from the folders."""
    proc = run_module("src.train", "--config-dir", "conf", "--help", cwd=moons)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split(":")[0].strip(): line for line in proc.stdout.splitlines() if ":" in line}
    # The project's options (whatever conf/ holds), and the folder's among them.
    data, nets = options("data"), options("model/net")
    assert lines["data"].split(":", 1)[1].replace(",", " ").split() == sorted([*data, "moons"])
    assert ", ".join(sorted([*nets, "wide_gate"])) in lines["model/net"]
    # Without the folder, the project's own options only.
    alone = run_module("src.train", "--help", cwd=moons).stdout
    assert "moons" not in alone and "wide_gate" not in alone and f"{', '.join(nets)}\n" in alone


def options(group: str) -> list[str]:
    """The options conf/ holds for a group: one per YAML file."""
    return sorted(path.stem for path in (REPO / "conf" / group).glob("*.yaml"))


def test_another_of_torchvisions_mnist_format_datasets_is_one_yaml(tmp_path):
    """conf/data/kmnist.yaml names torchvision's KMNIST and nothing else: it trains from its own
    folder (fake files here: no network), and a run says which data it read."""
    make_mnist_files(tmp_path, folder="KMNIST")
    proc = run_module("src.train", "+experiment=mnist_sgd", "data=kmnist",
                      f"data.data_dir={tmp_path}", "data.val_size=100", "trainer.max_epochs=1",
                      "hydra.run.dir=run", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = read_metrics(tmp_path / "run")
    assert metrics["status"] == "completed" and metrics["steps"] == 500 // 64 + 1
    assert not (tmp_path / "MNIST").exists()
