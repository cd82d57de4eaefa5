"""The debug and sweep presets, and `--help`: what they set, what their runs leave behind."""

import os
import re
import subprocess

import pytest
from hydra import compose, initialize_config_dir
from hydra.types import RunMode
from omegaconf import OmegaConf

from src.config import register, validate
from tests.conftest import PYTHON, REPO, read_metrics, run_train

CONF = REPO / "conf"
# The short runs draw no pictures: matplotlib alone takes seconds to import.
FAST_NAND = ("+experiment=nand", "data.steps_per_epoch=20", "trainer.max_epochs=1", "pictures=none")


def compose_train(*overrides: str, hydra: bool = False):
    register()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=hydra)


def options(group: str) -> set[str]:
    return {path.stem for path in (CONF / group).glob("*.yaml")}


def run(*args: str) -> subprocess.CompletedProcess:
    """`python -m <args>` as a user runs it: Hydra's short errors, no HYDRA_FULL_ERROR."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([*PYTHON, "-m", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


PRESETS = {
    "fdr": {"fast_dev_run": True},
    "overfit": {"overfit_batches": 5, "max_epochs": 500},
    "limit": {"max_epochs": 1, "limit_train_batches": 10, "limit_val_batches": 2,
              "limit_test_batches": 2},
    "profiler": {"profiler._target_": "lightning.pytorch.profilers.SimpleProfiler"},
}  # fmt: skip


@pytest.mark.parametrize("preset", PRESETS)
def test_debug_preset_sets_the_trainer_and_passes_the_schema(preset):
    assert set(PRESETS) == options("debug")
    cfg = compose_train("+experiment=mnist_sgd", f"+debug={preset}", "paths.output_dir=/tmp/run")
    validate(cfg)  # the profiler's node too
    for key, value in PRESETS[preset].items():
        assert OmegaConf.select(cfg.trainer, key) == value, key


def test_fdr_runs_one_batch_and_leaves_no_checkpoint_or_curves(tmp_path):
    run_train("+experiment=nand", "+debug=fdr", "pictures=none", f"hydra.run.dir={tmp_path}")
    metrics = read_metrics(tmp_path)
    assert metrics["status"] == "completed" and metrics["steps"] == 1
    assert not (tmp_path / "checkpoints").exists()
    assert not list(tmp_path.glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_profiler_writes_its_report_into_the_run_directory(tmp_path):
    run_train(*FAST_NAND, "+debug=profiler", f"hydra.run.dir={tmp_path}")
    report = (tmp_path / "fit-profile.txt").read_text()
    assert "run_training_epoch" in report and "run_training_batch" in report
    assert (tmp_path / "test-profile.txt").is_file()
    assert read_metrics(tmp_path)["steps"] == 20


@pytest.mark.slow
def test_overfit_learns_its_few_batches(tiny_mnist, tmp_path):
    # The preset's 5 batches; the tiny data's 500 training images would make 8.
    run_train("+experiment=mnist_sgd", "+debug=overfit", f"data.data_dir={tiny_mnist}",
              "data.val_size=100", "optimizer.lr=0.1", "trainer.max_epochs=20", "pictures=none",
              f"hydra.run.dir={tmp_path}")  # fmt: skip
    metrics = read_metrics(tmp_path)
    assert metrics["steps"] == 5 * 20
    assert metrics["train/loss"] < 0.1 and metrics["train/acc"] == 1.0


def test_unknown_debug_preset_is_refused_in_one_line(tmp_path):
    proc = run("src.train", "+experiment=nand", "+debug=nope", f"hydra.run.dir={tmp_path}")
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 2, output
    assert len(output.splitlines()) == 1 and "Traceback" not in output, output
    assert "debug" in output and all(name in output for name in options("debug")), output
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("preset", sorted(options("sweep")))
def test_sweep_preset_is_a_multirun_of_its_own(preset):
    # The experiment its comment's example command names.
    experiment = re.search(r"\+experiment=(\w+)", (CONF / "sweep" / f"{preset}.yaml").read_text())
    cfg = compose_train(f"+experiment={experiment[1]}", f"+sweep={preset}", hydra=True)
    assert cfg.hydra.mode == RunMode.MULTIRUN and cfg.hydra.sweeper.params


@pytest.mark.slow
def test_sweep_preset_runs_its_jobs_without_m(tmp_path):
    # A sweep on the command line takes the place of the preset's six rates.
    proc = run("src.train", *FAST_NAND, "+sweep=nand_lr", "optimizer.lr=0.5,1.0",
               f"hydra.sweep.dir={tmp_path}")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = sorted(path.parent.name for path in tmp_path.glob("*/metrics.json"))
    assert len(jobs) == 2 and "optimizer.lr=0.5" in jobs[0] and "optimizer.lr=1.0" in jobs[1]
    assert all(read_metrics(tmp_path / job)["status"] == "completed" for job in jobs)


def help_groups(text: str) -> dict[str, set[str]]:
    """The `group: a, b, c   what it is` lines of the help (continued on indented lines)."""
    section = text.split("== Groups")[1].split("== Examples")[0]
    groups, group = {}, None
    for line in section.splitlines()[1:]:
        match = re.match(r"\s+(\+?[\w/]+):\s+(.*)", line)
        if match:
            group, rest = match[1], match[2]
        elif line.strip() and group:
            rest = line.strip()
        else:
            continue
        names = re.split(r"\s{2,}", rest)[0]  # the options; a description follows after a gap
        groups.setdefault(group, set()).update(names.replace(",", " ").split())
    return groups


def test_help_lists_every_group_with_exactly_its_option_files():
    proc = run("src.train", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "schema" not in proc.stdout and "python -m src.eval" in proc.stdout
    groups = help_groups(proc.stdout)
    on_disk = {
        str(folder.relative_to(CONF))
        for folder in CONF.rglob("*")
        if folder.is_dir() and folder.name != "hydra" and folder.parent.name != "hydra"
        and any(folder.glob("*.yaml"))
    }  # fmt: skip
    assert {group.lstrip("+") for group in groups} == on_disk
    # A `+` where the config chooses nothing by default: Hydra refuses group=option there.
    chosen = compose_train(hydra=True).hydra.runtime.choices
    for group, names in groups.items():
        assert names == options(group.lstrip("+")), group
        assert group.startswith("+") == (group not in chosen), group


@pytest.mark.parametrize("entry", ["eval", "predict"])
def test_the_other_entry_points_keep_hydras_help(entry):
    proc = run(f"src.{entry}", "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{entry} is powered by Hydra")
