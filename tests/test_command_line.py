"""The command line as Hydra users type it: their own config folders, the template's habits,
`--cfg job --resolve`, and refusals that leave no run behind."""

import json
import os
import subprocess

import pytest

from tests.conftest import PYTHON, REPO

MY_EXPERIMENT = """# @package _global_
defaults:
  - nand
  - _self_
name: my_exp
optimizer:
  lr: 2.0
"""


def train(*args, cwd=REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([*PYTHON, "-m", "src.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.fixture
def my_conf(tmp_path):
    (tmp_path / "my_conf" / "experiment").mkdir(parents=True)
    (tmp_path / "my_conf" / "experiment" / "my_exp.yaml").write_text(MY_EXPERIMENT)
    return tmp_path / "my_conf"


@pytest.mark.slow
@pytest.mark.parametrize("how", ["--config-dir", "hydra.searchpath"])
def test_an_experiment_in_a_folder_of_ones_own(how, my_conf, tmp_path):
    place = ["--config-dir", str(my_conf)] if how == "--config-dir" else [
        f"hydra.searchpath=[file://{my_conf}]"]  # fmt: skip
    run_dir = tmp_path / "run"
    proc = train(*place, "+experiment=my_exp", "+debug=fdr", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "completed" and "+experiment=my_exp" in record["overrides"]
    assert "lr: 2.0" in (run_dir / ".hydra" / "config.yaml").read_text()
    # A typo is still one line, listing the folder's options beside conf/'s.
    proc = train(*place, "+experiment=my_exq")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "error: experiment=my_exq is not one of: mnist_adam, mnist_cnn, mnist_sgd, my_exp, nand, "
        f"xor, xor_linear (conf/experiment/, {my_conf}/experiment/)"
    ]


def test_an_experiment_without_a_plus_says_to_add_one():
    proc = train("experiment=nand")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [
        "error: experiment=nand: experiment is not in the defaults list; add it with "
        "+experiment=nand"
    ]


def test_a_resolved_config_has_no_none_for_a_path():
    proc = train("+experiment=nand", "--cfg", "job", "--resolve")
    assert proc.returncode == 0, proc.stderr
    assert "None" not in proc.stdout
    # Run-time paths stay as Hydra's interpolation: there is no run directory yet.
    assert "dirpath: ${hydra:runtime.output_dir}/checkpoints" in proc.stdout
    assert "data_dir: data" in proc.stdout


def test_a_refused_run_leaves_nothing_behind(tmp_path):
    proc = train("+experiment=nand", "optimizer.lr=-1", cwd=tmp_path)
    said = "optimizer.lr (torch.optim.SGD): Invalid learning rate: -1.0"  # PyTorch's own check
    assert proc.returncode == 2 and said in proc.stdout
    assert not list((tmp_path / "outputs" / "runs").iterdir())  # not even the day's folder
