"""A new optimizer or schedule is one YAML file, in a config folder of one's own: no schema, and a
value PyTorch refuses is still one line naming the key, before any data is read."""

from pathlib import Path

import pytest

from tests.conftest import read_metrics
from tests.test_extensions import run_module

RMSPROP = """_target_: torch.optim.RMSprop
_partial_: true
lr: 0.01
"""
EXPONENTIAL = """defaults:
  - /schema/scheduler/base@_here_  # Lightning's lr_scheduler dict: interval, frequency, monitor
  - _self_

interval: epoch
schedule:
  _target_: torch.optim.lr_scheduler.ExponentialLR
  _partial_: true
  gamma: 0.9
"""
NEW = ("--config-dir", "conf", "+experiment=nand", "optimizer=rmsprop", "scheduler=exponential",
       "hydra.run.dir=run")  # fmt: skip


@pytest.fixture
def new_options(tmp_path) -> Path:
    """tmp_path holding conf/optimizer/rmsprop.yaml and conf/scheduler/exponential.yaml."""
    for group, name, text in (("optimizer", "rmsprop", RMSPROP),
                              ("scheduler", "exponential", EXPONENTIAL)):  # fmt: skip
        (tmp_path / "conf" / group).mkdir(parents=True)
        (tmp_path / "conf" / group / f"{name}.yaml").write_text(text)
    return tmp_path


@pytest.mark.slow
def test_a_new_optimizer_and_schedule_train(new_options):
    proc = run_module("src.train", *NEW, "data.steps_per_epoch=10", "trainer.max_steps=30",
                      "pictures=none", cwd=new_options)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = read_metrics(new_options / "run")
    assert metrics["status"] == "completed" and metrics["steps"] == 30, metrics
    assert metrics["settings"]["optimizer"] == "RMSprop"
    assert metrics["settings"]["scheduler"] == "ExponentialLR"


@pytest.mark.parametrize(("wrong", "said"), [
    ("optimizer.lr=-1", "optimizer.lr (torch.optim.RMSprop): Invalid learning rate: -1"),
    ("+optimizer.alpha=-0.5", "optimizer.alpha (torch.optim.RMSprop): Invalid alpha value: -0.5"),
    ("scheduler.schedule.gamma=abc", "scheduler.schedule "
     "(torch.optim.lr_scheduler.ExponentialLR): can't multiply sequence by non-int of type"),
    ("+scheduler.schedule.gama=0.5", "scheduler.schedule.gama "
     "(torch.optim.lr_scheduler.ExponentialLR): ExponentialLR.__init__() got an unexpected keyword "
     "argument 'gama'"),
])  # fmt: skip
def test_a_wrong_value_of_a_new_option_is_refused_in_one_line(new_options, wrong, said):
    proc = run_module("src.train", *NEW, wrong, cwd=new_options)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and f"[ERROR] - {said}" in lines[0], output
    assert not (new_options / "run").exists()  # refused before the run began
