"""Tab completion of the console scripts (pyproject.toml), asked as bash asks: the function that
`primer-train -sc install=bash` defines runs `primer-train -sc query=bash` with the line in
COMP_LINE and the cursor in COMP_POINT, and offers the words it prints. And each console script
is its `python -m src.<command>`."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, read_metrics

BIN = Path(sys.executable).parent  # where pip puts the console scripts of this Python's install
EXPERIMENTS = sorted(p.stem for p in (REPO / "conf/experiment").glob("*.yaml"))


def program(name: str) -> Path:
    """The installed console script `name`."""
    path = BIN / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: pip install -e . (make install) installs the console "
                    "scripts; an install from before they existed needs it again")  # fmt: skip
    return path


def run(*args, cwd: Path = REPO, **env: str) -> subprocess.CompletedProcess:
    """Run a command with `env` added to the environment."""
    return subprocess.run([str(arg) for arg in args], cwd=cwd, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def offered(line: str) -> list[str]:
    """The words Tab offers at the end of `line`, asked of its program as Hydra's bash function
    asks (which then keeps those that start with the word under the cursor)."""
    proc = run(program(line.split()[0]), "-sc", "query=bash", COMP_LINE=line,
               COMP_POINT=str(len(line)))  # fmt: skip
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    return proc.stdout.split()


def test_every_experiment_is_offered():
    assert {"mnist_sgd", "nand", "xor"} <= set(EXPERIMENTS)
    assert offered("primer-train +experiment=") == [f"+experiment={name}" for name in EXPERIMENTS]


@pytest.mark.parametrize(("line", "group"), [("primer-train +experiment=nand optim", "optimizer="),
                                             ("primer-train model/", "model/net=")])  # fmt: skip
def test_a_group_is_offered_from_the_start_of_its_name(line, group):
    assert group in offered(line)


def test_the_keys_of_the_config_the_line_composes_are_offered():
    keys = offered("primer-train +experiment=mnist_sgd optimizer.")
    assert {"optimizer.lr=", "optimizer.momentum="} <= set(keys)
    # The words before the cursor count: Adam's keys, not SGD's.
    keys = offered("primer-train +experiment=mnist_sgd optimizer=adam optimizer.")
    assert "optimizer.eps=" in keys and "optimizer.momentum=" not in keys


@pytest.mark.parametrize(("line", "key"), [("primer-eval ckpt", "ckpt_path="),
                                           ("primer-predict inp", "input=")])  # fmt: skip
def test_eval_and_predict_offer_their_own_keys(line, key):
    assert offered(line) == [key]


@pytest.mark.parametrize("name", ["primer-train", "primer-eval", "primer-predict"])
def test_the_installed_completion_is_for_the_console_script(name):
    proc = run(program(name), "-sc", "install=bash")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1].endswith(f" -F hydra_bash_completion {name}")


def test_bash_completes_an_experiment_through_the_installed_function():
    """The whole round as a shell does it, with the program found on PATH."""
    script = """eval "$(primer-train -sc install=bash)"
        complete -p primer-train
        COMP_LINE='primer-train +experiment=na'; COMP_POINT=${#COMP_LINE} COMP_CWORD=1
        hydra_bash_completion
        printf '%s\\n' "${COMPREPLY[@]}"
    """
    proc = run("bash", "-c", script, PATH=f"{program('primer-train').parent}:{os.environ['PATH']}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "complete -o default -o nospace -F hydra_bash_completion primer-train",
        "+experiment=nand",
    ]


def test_the_console_script_composes_and_refuses_as_python_m():
    def both(*args: str) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
        return run(program("primer-train"), *args), run(sys.executable, "-m", "src.train", *args)

    script, module = both("+experiment=nand", "--cfg", "all")
    assert script.returncode == module.returncode == 0
    assert script.stdout == module.stdout
    script, module = both("+experiment=nand", "optimizer=nope")
    assert script.returncode == module.returncode == 2
    assert script.stderr == module.stderr
    assert script.stderr.startswith("error: optimizer=nope is not one of: ")


GATE = """from torch import nn


class Gate(nn.Sequential):
    def __init__(self):
        super().__init__(nn.Linear(2, 1), nn.Sigmoid())
"""


def test_the_console_script_imports_a_network_from_where_it_starts(tmp_path):
    """As `python -m` does from the repository root; here from a folder elsewhere."""
    (tmp_path / "my_gate.py").write_text(GATE)
    proc = run(program("primer-train"), "+experiment=nand", "model/net=custom",
               "model.net._target_=my_gate.Gate", "+debug=fdr", "hydra.run.dir=run",
               cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert read_metrics(tmp_path / "run")["status"] == "completed"
