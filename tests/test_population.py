"""hydra/launcher=population: who trains together, and that each member's folder is the one its
job alone leaves (records, TensorBoard curves, checkpoints), for a member that diverges too."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from src.config import register
from src.eval import evaluate
from src.population import alone_because, loop_key, share_out
from tests.conftest import PYTHON, REPO, read_metrics
from tests.test_sweep import run_sweep

# A rate that diverges on the tiny files (its loss explodes), and two that learn.
RATES = "optimizer.lr=1e6,0.1,0.01"
TIMES = ("fit_seconds", "train_seconds")  # the population's fit is every member's


def compose_train(*overrides: str):
    register()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=["+experiment=mnist_sgd", *overrides])


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (["lr_find=true"], "lr_find=true tries learning rates on its own network"),
        (["trainer.devices=2"], "it trains on several devices (DDP)"),
        (["+callbacks.mine._target_=tests.user_code.Anything"], "its callback mine"),
        (["logger=mlflow"], "its logger mlflow"),
        (["scheduler=plateau"], "ReduceLROnPlateau follows its own run's metric"),
        (["trainer.precision=16-mixed"], "float16 mixed precision scales the whole population's"),
        (["optimizer._target_=torch.optim.LBFGS"], "LBFGS evaluates its own run's loss again"),
        (["ckpt_path=/some/last.ckpt"], "it continues from its own checkpoint"),
    ],
)
def test_a_job_a_population_cannot_hold_trains_alone(overrides, reason, tmp_path):
    assert alone_because(compose_train(*overrides), tmp_path).startswith(reason)
    assert alone_because(compose_train(), tmp_path) is None


def test_members_share_all_but_the_optimizer_the_schedules_values_and_the_name():
    key = loop_key(compose_train())
    for same in (["optimizer.lr=0.5"], ["optimizer.momentum=0.9", "optimizer.weight_decay=0.1"],
                 ["optimizer=adam"], ["trainer.gradient_clip_val=1"], ["name=other"]):  # fmt: skip
        assert loop_key(compose_train(*same)) == key, same
    # Each member has its own initialization and draws its own batches: seeds may differ.
    assert loop_key(compose_train("seed=1", "data.seed=7")) == key
    for other in (["data.batch_size=32"], ["data.split_seed=1"],
                  ["model.net=mlp"],
                  ["trainer.max_epochs=3"], ["scheduler=cosine"]):  # fmt: skip
        assert loop_key(compose_train(*other)) != key, other
    # Each member steps its own schedule: its values may differ, its class and interval not.
    step = loop_key(compose_train("scheduler=step"))
    for same in (["scheduler.schedule.gamma=0.9", "scheduler.schedule.step_size=1"],
                 ["optimizer.lr=0.5"]):  # fmt: skip
        assert loop_key(compose_train("scheduler=step", *same)) == step, same
    for other in (["scheduler.interval=step"], ["scheduler=cosine"],
                  ["scheduler.schedule._target_=torch.optim.lr_scheduler.LinearLR"]):  # fmt: skip
        assert loop_key(compose_train("scheduler=step", *other)) != step, other
    # Any of PyTorch's schedules but one that follows a metric (ReduceLROnPlateau, above).
    cyclic = compose_train("scheduler=step", "scheduler.schedule._target_=" +
                           "torch.optim.lr_scheduler.CyclicLR")  # fmt: skip
    assert alone_because(cyclic, Path("/nonexistent")) is None


def sweep(tiny_mnist, sweep_dir, launcher: str, *overrides: str) -> subprocess.CompletedProcess:
    """test_sweep's tiny MNIST sweep, under `launcher`, into `sweep_dir`."""
    return run_sweep(tiny_mnist, f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep_dir}",
                     *overrides)  # fmt: skip


def assert_same_record(mine: dict, theirs: dict, name: str) -> None:
    """A member's metrics.json (less `population`) against its job's alone: the same keys and
    values, but for the times, which are the population's fit's."""
    mine, theirs = dict(mine), dict(theirs)
    for key in TIMES:
        mine.pop(key, None), theirs.pop(key, None)
    assert mine.keys() == theirs.keys(), name
    for key, value in theirs.items():
        if isinstance(value, float):
            assert mine[key] == pytest.approx(value, rel=1e-6, abs=1e-7), (name, key)
        else:
            assert mine[key] == value, (name, key)


def scalars(run_dir):
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0,
                                                           "histograms": 0})  # fmt: skip
    events.Reload()
    tags = events.Tags()
    curves = {tag: [(s.step, s.value) for s in events.Scalars(tag)] for tag in tags["scalars"]}
    return curves, sorted(tags["images"]), sorted(tags["histograms"])


@pytest.mark.slow
def test_each_member_leaves_the_folder_its_job_alone_leaves(tiny_mnist, tmp_path):
    together, alone = tmp_path / "population", tmp_path / "basic"
    # A schedule over the run whose values differ from member to member (OneCycle's max_lr is the
    # member's optimizer.lr): each member's rates and its schedule's state are its own.
    proc = sweep(tiny_mnist, together, "population", RATES, "scheduler=onecycle")
    output = proc.stdout + proc.stderr
    sweep(tiny_mnist, alone, "basic", RATES, "scheduler=onecycle")
    names = sorted(p.parent.name for p in alone.glob("*/metrics.json"))
    assert names == sorted(p.parent.name for p in together.glob("*/metrics.json"))
    assert ("population of 3 trains together: optimizer.lr=1000000.0, optimizer.lr=0.1, "
            "optimizer.lr=0.01") in output  # fmt: skip
    statuses = {}
    for name in names:
        mine, theirs = read_metrics(together / name), read_metrics(alone / name)
        assert mine.pop("population") == [
            "optimizer.lr=1000000.0", "optimizer.lr=0.1", "optimizer.lr=0.01"]  # fmt: skip
        assert_same_record(mine, theirs, name)
        statuses[name] = mine["status"]
        # The same curves at the same steps, the same pictures.
        (curves, images, histograms), theirs_events = (
            scalars(together / name),
            scalars(alone / name),
        )
        assert curves.keys() == theirs_events[0].keys(), name
        for tag, points in theirs_events[0].items():
            assert [s for s, _ in curves[tag]] == [s for s, _ in points], (name, tag)
            assert [v for _, v in curves[tag]] == pytest.approx([v for _, v in points], rel=1e-6)
        assert (images, histograms) == theirs_events[1:], name
        # The same checkpoint: weights, optimizer state, loops, callbacks' states.
        last = alone / name / "checkpoints/last.ckpt"
        assert (together / name / "checkpoints/last.ckpt").is_file() == last.is_file(), name
        if not last.is_file():  # diverged in its first epoch
            continue
        ckpt = torch.load(together / name / "checkpoints/last.ckpt", weights_only=True)
        other = torch.load(alone / name / "checkpoints/last.ckpt", weights_only=True)
        assert ckpt.keys() == other.keys() and ckpt["callbacks"].keys() == other["callbacks"].keys()
        for key, weight in other["state_dict"].items():
            assert torch.equal(ckpt["state_dict"][key], weight), (name, key)
        mine_groups = ckpt["optimizer_states"][0]["param_groups"]
        assert mine_groups == other["optimizer_states"][0]["param_groups"], name
        assert ckpt["lr_schedulers"] == other["lr_schedulers"], name
        assert (ckpt["loops"], ckpt["config"], ckpt["global_step"]) == (
            other["loops"], other["config"], other["global_step"])  # fmt: skip
    assert statuses == {"optimizer.lr=1000000.0": "diverged", "optimizer.lr=0.1": "completed",
                        "optimizer.lr=0.01": "completed"}  # fmt: skip

    # src.eval of a member's checkpoint gives its recorded test numbers.
    run_dir = together / "optimizer.lr=0.1"
    recorded = read_metrics(run_dir)
    register()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("eval", overrides=[f"ckpt_path='{run_dir / 'checkpoints/last.ckpt'}'",
                                         f"paths.output_dir={tmp_path}",
                                         "trainer.accelerator=cpu"])  # fmt: skip
    evaluated = evaluate(cfg, tmp_path)
    for key in ("test/acc", "test/loss", "test/ece"):
        assert evaluated[key] == pytest.approx(recorded[key], rel=1e-6), key

    # The same sweep run again leaves its finished jobs as they are.
    before = {p.parent.name: p.read_text() for p in together.glob("*/metrics.json")}
    again = sweep(tiny_mnist, together, "population", RATES, "scheduler=onecycle")
    assert (again.stdout + again.stderr).count("trains alone: it finished earlier") == 3
    assert {p.parent.name: p.read_text() for p in together.glob("*/metrics.json")} == before


@pytest.mark.slow
def test_jobs_that_share_no_loop_train_alone_saying_why(tiny_mnist, tmp_path):
    proc = sweep(tiny_mnist, tmp_path, "population", "data.batch_size=32,64")
    output = proc.stdout + proc.stderr
    for name in ("data.batch_size=32", "data.batch_size=64"):
        assert f"{name} trains alone: no other job shares its training loop" in output
        assert read_metrics(tmp_path / name)["status"] == "completed"
        assert "population" not in read_metrics(tmp_path / name)


@pytest.mark.slow
def test_members_step_their_own_optimizers_and_schedules_and_clip_their_own_gradients(tmp_path):
    """SGD and Adam members, with two batches accumulated per step and a schedule, some clipping
    their gradients (by a norm small enough to bind) and some not: one population, each member's
    record, curves, weights, optimizer and schedule states its job's alone, to the bit (a norm
    over the whole population's gradients would part them). The schedule's values differing
    between members: test_each_member_leaves_the_folder_its_job_alone_leaves."""
    grid = ("+experiment=nand", "data.steps_per_epoch=50", "trainer.max_steps=100",
            "trainer.accumulate_grad_batches=2", "trainer.gradient_clip_val=0.05,null",
            "optimizer=sgd,adam", "optimizer.lr=2.0", "scheduler=step",
            "scheduler.schedule.step_size=1", "scheduler.schedule.gamma=0.5")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for launcher in ("population", "basic"):
        cmd = [*PYTHON, "-m", "src.train", "-m", *grid, f"hydra/launcher={launcher}",
               f"hydra.sweep.dir={tmp_path / launcher}"]  # fmt: skip
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    names = sorted(p.parent.name for p in (tmp_path / "basic").glob("*/metrics.json"))
    assert len(names) == 4
    losses = set()
    for name in names:
        mine, theirs = (read_metrics(tmp_path / launcher / name)
                        for launcher in ("population", "basic"))  # fmt: skip
        assert sorted(mine.pop("population")) == names
        assert_same_record(mine, theirs, name)
        assert scalars(tmp_path / "population" / name) == scalars(tmp_path / "basic" / name)
        losses.add(theirs["test/loss"])
        ckpts = [torch.load(tmp_path / launcher / name / "checkpoints/last.ckpt",
                            weights_only=True) for launcher in ("population", "basic")]  # fmt: skip
        for key, weight in ckpts[1]["state_dict"].items():
            assert torch.equal(ckpts[0]["state_dict"][key], weight), (name, key)
        mine_opt, their_opt = (c["optimizer_states"][0] for c in ckpts)
        assert mine_opt["param_groups"] == their_opt["param_groups"], name
        assert mine_opt["state"].keys() == their_opt["state"].keys(), name
        for index, state in their_opt["state"].items():
            for key, value in state.items():
                assert torch.equal(mine_opt["state"][index][key], value), (name, index, key)
        assert ckpts[0]["lr_schedulers"] == ckpts[1]["lr_schedulers"], name
    assert len(losses) == 4  # each clipped member's its own, not its unclipped twin's


STOPPED_GRID = ("+experiment=nand", "optimizer.lr=0.5,1.0", "data.steps_per_epoch=100",
                "trainer.max_steps=500", "trainer.max_epochs=5")  # fmt: skip
SHARED_RUNS = ("undisturbed_grid",)  # made once for both tests that read it (conftest.py)


@pytest.fixture(scope="module")
def undisturbed_grid(tmp_path_factory) -> Path:
    """STOPPED_GRID's sweep under the basic launcher, never stopped."""
    sweep_dir = tmp_path_factory.mktemp("undisturbed")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [*PYTHON, "-m", "src.train", "-m", *STOPPED_GRID, f"hydra.sweep.dir={sweep_dir}"]
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, timeout=600)
    return sweep_dir


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_a_population_stopped_by_sigterm_is_continued_by_the_same_command(workers,
                                                                          undisturbed_grid,
                                                                          tmp_path):  # fmt: skip
    """SIGTERM in the middle of an epoch (to the sweep's process, which passes it on to its
    worker processes): every member is recorded interrupted with a checkpoint of that moment,
    from which the same command continues each job (alone) to the numbers of an undisturbed
    run."""
    together = tmp_path / "population"
    cmd = [*PYTHON, "-m", "src.train", "-m", *STOPPED_GRID, "hydra/launcher=population",
           f"hydra.launcher.n_jobs={workers}", f"hydra.sweep.dir={together}"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    first = together / "optimizer.lr=0.5" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not first.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 143, output
    for name in ("optimizer.lr=0.5", "optimizer.lr=1.0"):
        record = read_metrics(together / name)
        assert record["status"] == "interrupted", record
        assert record["error"] == f"stopped by SIGTERM at step {record['steps']}"
        assert 0 < record["steps"] < 500 and record["checkpoint"] == "checkpoints/last.ckpt"
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (again.stdout + again.stderr).count("trains alone: it continues from its own") == 2
    for name in ("optimizer.lr=0.5", "optimizer.lr=1.0"):
        resumed, plain = read_metrics(together / name), read_metrics(undisturbed_grid / name)
        assert resumed["status"] == plain["status"] == "completed"
        for key in ("steps", "val/loss", "test/loss", "train/loss"):
            assert resumed[key] == pytest.approx(plain[key], rel=1e-6), (name, key)


def test_workers_take_whole_populations_and_split_one_only_to_keep_each_busy():
    assert share_out([[0, 1, 2], [3, 4, 5]], [6], workers=1) == [[0, 1, 2], [3, 4, 5], [6]]
    assert share_out([[0, 1, 2, 3, 4, 5]], [], workers=2) == [[0, 1, 2], [3, 4, 5]]
    assert share_out([list(range(8))], [], workers=4) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert share_out([[0, 1, 2]], [3], workers=2) == [[0, 1, 2], [3]]
    # Halves of fewer than two would be jobs alone: a population of three stays whole.
    assert share_out([[0, 1, 2]], [], workers=2) == [[0, 1, 2]]


@pytest.mark.slow
def test_members_of_other_seeds_train_together_in_two_worker_processes(tiny_mnist, tmp_path):
    """Seeds share a population (each member its own initialization and its own batches), and
    hydra.launcher.n_jobs=2 splits the population of four into two of two, one per process; each
    member's record and last checkpoint are those of its job alone."""
    grid = ("optimizer.lr=0.1,0.01", "seed=1,2")
    together, alone = tmp_path / "population", tmp_path / "basic"
    proc = sweep(tiny_mnist, together, "population", *grid, "hydra.launcher.n_jobs=2")
    sweep(tiny_mnist, alone, "basic", *grid)
    output = proc.stdout + proc.stderr
    for lr in ("0.1", "0.01"):
        assert (f"population of 2 trains together: optimizer.lr={lr},seed=1, "
                f"optimizer.lr={lr},seed=2") in output  # fmt: skip
    names = sorted(p.parent.name for p in alone.glob("*/metrics.json"))
    assert len(names) == 4
    weights = {}
    for name in names:
        mine = read_metrics(together / name)
        lr = name.split(",")[0]
        assert mine.pop("population") == [f"{lr},seed=1", f"{lr},seed=2"]
        assert_same_record(mine, read_metrics(alone / name), name)
        ckpt = torch.load(together / name / "checkpoints/last.ckpt", weights_only=True)
        other = torch.load(alone / name / "checkpoints/last.ckpt", weights_only=True)
        for key, weight in other["state_dict"].items():
            assert torch.equal(ckpt["state_dict"][key], weight), (name, key)
        assert ckpt["loops"] == other["loops"], name
        weights[name] = ckpt["state_dict"]["net.hidden.weight"]
    # The seeds made other networks.
    assert not torch.equal(weights["optimizer.lr=0.1,seed=1"], weights["optimizer.lr=0.1,seed=2"])


def test_no_worker_process_is_refused_in_one_line(tmp_path):
    cmd = [*PYTHON, "-m", "src.train", "-m", "+experiment=nand", "optimizer.lr=0.1,0.5",
           "hydra/launcher=population", "hydra.launcher.n_jobs=0",
           f"hydra.sweep.dir={tmp_path / 'sweep'}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: hydra.launcher.n_jobs=0 would start no process: give 1 (this one), 2 or more, "
        "or -1 (one per core), as for joblib"]  # fmt: skip
    assert not list((tmp_path / "sweep").glob("*/metrics.json"))
