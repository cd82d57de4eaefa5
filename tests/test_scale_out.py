"""Beyond one process: each engine the README gives for more machines, run for real on this one.

torchrun (one node and two), Hydra sweeps whose jobs are DDP runs, submitit's local executor and
Optuna workers sharing one study, all on the CPU with gloo and tiny data; each test reads back the
files a user would read.
"""

import json
import os
import socket
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from src.checkpoints import load_run
from tests.conftest import PYTHON, REPO, read_metrics

ENV = {
    **os.environ,
    "HYDRA_FULL_ERROR": "1",
    "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
}
TINY = ("data.val_size=100", "trainer.max_epochs=2")


def free_port() -> int:
    """A TCP port no one listens on now, for a rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(*launch: str) -> list[str]:
    """torchrun (torch.distributed.run, the module its console script calls) on src.train; the
    ranks it starts are real interpreters (sys.executable)."""
    return [*PYTHON, "-m", "torch.distributed.run", *launch, "-m", "src.train"]


def run(command: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, f"{command} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc


def run_dirs(root: Path) -> list[Path]:
    """The run directories under root/outputs/runs (each named by torchrun or by its start)."""
    return sorted((root / "outputs" / "runs").glob("*/*"))


def evaluate(ckpt: Path, out_dir: Path) -> dict:
    """src.eval of `ckpt` in one process: its metrics.json."""
    run([*PYTHON, "-m", "src.eval", f"ckpt_path={ckpt}", f"hydra.run.dir={out_dir}",
         "trainer.accelerator=cpu"], cwd=REPO)  # fmt: skip
    return read_metrics(out_dir)


def count_by_hand(ckpt: Path) -> dict:
    """The test loss and accuracy of a checkpoint over every test image, counted once each."""
    module, datamodule, _ = load_run(ckpt)
    datamodule.setup()
    x, y = datamodule.test_set.tensors
    with torch.no_grad():
        out = module(x)
    return {"n": len(y), "test/acc": (out.argmax(dim=1) == y).double().mean().item(),
            "test/loss": nn.functional.cross_entropy(out, y).item()}  # fmt: skip


def rank_losses(out_dir: Path) -> dict[int, dict]:
    """What tests/rank_losses.py wrote: each rank's learning rate and (epoch, loss, batch size)
    per training step."""
    return {int(p.stem[4:]): json.loads(p.read_text()) for p in out_dir.glob("rank*.json")}


def losses_callback(out_dir: Path) -> tuple[str, str]:
    return ("+callbacks.rank_losses._target_=tests.rank_losses.RankLosses",
            f"+callbacks.rank_losses.out_dir={out_dir}")  # fmt: skip


def assert_mean_over_ranks(metrics: dict, ranks_wrote: dict[int, dict], ranks: int) -> None:
    """train/loss is the mean over every rank's minibatches of the last epoch, each rank stepping
    as often."""
    assert sorted(ranks_wrote) == list(range(ranks))
    assert len({len(wrote["batches"]) for wrote in ranks_wrote.values()}) == 1
    last = metrics["epochs"] - 1
    pairs = [(loss, n) for wrote in ranks_wrote.values() for epoch, loss, n in wrote["batches"]
             if epoch == last]  # fmt: skip
    mean = sum(loss * n for loss, n in pairs) / sum(n for _, n in pairs)
    assert metrics["train/loss"] == pytest.approx(mean, rel=1e-5)


def assert_one_ddp_run(run_dir: Path, losses: Path, ranks: int, eval_dir: Path) -> dict:
    """The run's record covers every rank: train/loss is the mean over every rank's minibatches,
    the test numbers are the tested checkpoint's over every test image once, and src.eval of that
    checkpoint gives them again."""
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "completed" and metrics["tested"] == "checkpoints/last.ckpt"
    assert_mean_over_ranks(metrics, rank_losses(losses), ranks)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    by_hand = count_by_hand(ckpt)
    assert by_hand["n"] == 100
    assert metrics["test/acc"] == pytest.approx(by_hand["test/acc"], abs=1e-6)
    assert metrics["test/loss"] == pytest.approx(by_hand["test/loss"], rel=1e-5)
    evaluated = evaluate(ckpt, eval_dir)
    for key in ("test/acc", "test/loss", "test/ece"):
        assert evaluated[key] == pytest.approx(metrics[key], rel=1e-5, abs=1e-7), key
    return metrics


SHARED_RUNS = ("one_node",)  # runs several tests read: each made once (conftest.py)


@pytest.fixture(scope="module")
def one_node(tiny_mnist, tmp_path_factory) -> Path:
    """A torchrun of two ranks on one node, as the README gives it: the folder it ran in."""
    cwd = tmp_path_factory.mktemp("one_node")
    run([*torchrun("--standalone", "--nproc-per-node=2"), "+experiment=mnist_sgd",
         "trainer=ddp_cpu", f"data.data_dir={tiny_mnist}", *TINY,
         *losses_callback(cwd / "losses")], cwd=cwd)  # fmt: skip
    return cwd


@pytest.mark.slow
def test_torchrun_on_one_node_writes_one_run_of_both_ranks(one_node):
    # Both ranks composed the same directory from torchrun's run id; rank 0 wrote the records.
    (run_dir,) = run_dirs(one_node)
    assert run_dir.parent.name == "torchrun" and run_dir.name.startswith("mnist_sgd_")
    assert list(one_node.rglob("metrics.json")) == [run_dir / "metrics.json"]
    assert sorted(p.name for p in run_dir.glob("*.log")) == ["train.log", "train_ddp_process_1.log"]
    metrics = assert_one_ddp_run(run_dir, one_node / "losses", ranks=2, eval_dir=one_node / "eval")
    # 500 training images over two ranks: 250 each, 4 minibatches of 64 or fewer per epoch.
    assert metrics["steps"] == 8 and metrics["epochs"] == 2


def two_nodes(rdzv_id: str, *overrides: str, cwd: Path) -> list[subprocess.CompletedProcess]:
    """Two torchrun invocations, one per node, meeting at a rendezvous on 127.0.0.1: one rank
    each, as two machines with one device would run them."""
    port = free_port()
    nodes = [subprocess.Popen(
        [*torchrun("--nnodes=2", f"--node-rank={rank}", "--nproc-per-node=1",
                   "--master-addr=127.0.0.1", f"--master-port={port}", f"--rdzv-id={rdzv_id}"),
         "+experiment=mnist_sgd", "trainer=ddp_cpu", "trainer.devices=1", "trainer.num_nodes=2",
         *overrides],
        cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) for rank in (0, 1)]  # fmt: skip
    ended = []
    for node in nodes:
        out, err = node.communicate(timeout=300)
        ended.append(subprocess.CompletedProcess(node.args, node.returncode, out, err))
    return ended


@pytest.mark.slow
def test_two_nodes_stopped_by_a_sigterm_to_one_continue_on_two_nodes(tiny_mnist, one_node,
                                                                     tmp_path):  # fmt: skip
    """SIGTERM to the second node's torchrun, as a scheduler would stop one machine: it passes
    the signal to its rank only, and every rank stops at the same step, with a checkpoint. The
    run resumed on two nodes ends as the run never stopped, on one node, did."""
    data = (f"data.data_dir={tiny_mnist}", *TINY)
    sigterm = ("+callbacks.sigterm._target_=tests.signals.Sigterm", "+callbacks.sigterm.step=2",
               "+callbacks.sigterm.to=parent", "+callbacks.sigterm.rank=1")  # fmt: skip
    stopped = two_nodes("stopped", *data, *sigterm, cwd=tmp_path)
    assert all(node.returncode != 0 for node in stopped)  # each ended, none hung
    (run_dir,) = run_dirs(tmp_path)
    assert run_dir == tmp_path / "outputs" / "runs" / "torchrun" / "mnist_sgd_stopped"
    assert sorted(p.name for p in run_dir.glob("*.log")) == ["train.log", "train_ddp_process_1.log"]
    record = read_metrics(run_dir)
    assert record["status"] == "interrupted" and record["checkpoint"] == "checkpoints/last.ckpt"
    step = record["steps"]  # the first step after the signal reached the second node's rank
    assert 2 <= step < 8 and record["error"] == f"stopped by SIGTERM at step {step}"
    assert "test/acc" not in record

    ckpt = run_dir / "checkpoints" / "last.ckpt"
    resumed = two_nodes("resumed", *data, f"ckpt_path={ckpt}", cwd=tmp_path)
    assert [node.returncode for node in resumed] == [0, 0], resumed[0].stderr[-3000:]
    resumed_dir = run_dir.with_name("mnist_sgd_resumed")
    assert run_dirs(tmp_path) == [resumed_dir, run_dir]
    assert len(list(tmp_path.rglob("metrics.json"))) == 2
    metrics = read_metrics(resumed_dir)
    assert metrics["status"] == "completed" and metrics["resumed_from"] == str(ckpt)
    # The same two ranks on one node, never stopped: the same weights and numbers.
    (whole_dir,) = run_dirs(one_node)
    whole = read_metrics(whole_dir)
    for key in ("train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc",
                "test/ece", "steps", "epochs"):  # fmt: skip
        assert metrics[key] == pytest.approx(whole[key], rel=1e-6), key
    weights, whole_weights = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=False)
                              ["state_dict"] for d in (resumed_dir, whole_dir))  # fmt: skip
    for name, value in whole_weights.items():
        assert torch.allclose(weights[name], value, rtol=1e-6, atol=1e-7), name
    by_hand = count_by_hand(resumed_dir / "checkpoints" / "last.ckpt")
    assert metrics["test/acc"] == pytest.approx(by_hand["test/acc"], abs=1e-6)


@pytest.mark.slow
def test_torchrun_refuses_what_would_split_the_run(tmp_path):
    """Several nodes agree on a directory only through an id each is given: torchrun's default
    one is the same for every run. A trainer counting other ranks than torchrun started would
    wait for them forever; a sweep would be run by every rank. Each is one line, before any run
    directory is made."""
    port = free_port()
    proc = subprocess.run(
        [*torchrun("--nnodes=1", "--nproc-per-node=1", "--rdzv-backend=c10d",
                   f"--rdzv-endpoint=127.0.0.1:{port}"), "+experiment=nand"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert ("error: torchrun without --standalone needs --rdzv-id=<id>, the same on every node "
            "and new for each run") in proc.stderr  # fmt: skip
    proc = subprocess.run(
        [*torchrun("--standalone", "--nproc-per-node=1"), "+experiment=nand", "trainer=ddp_cpu"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    said = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in proc.stdout
    assert ("torchrun runs 1 ranks, but trainer.devices=2 times trainer.num_nodes=1 make 2: give "
            "torchrun --nproc-per-node=<trainer.devices>") in said  # fmt: skip
    proc = subprocess.run(
        [*torchrun("--standalone", "--nproc-per-node=1"), "-m", "+experiment=nand",
         "optimizer.lr=0.5,1"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    assert ("error: -m: torchrun starts one training run, and every rank would run the sweep "
            "itself; run the sweep without torchrun") in proc.stderr  # fmt: skip
    assert not run_dirs(tmp_path)


def job_dirs(sweep_dir: Path) -> list[Path]:
    """A sweep's job directories, found by what Hydra writes into each, not by their names."""
    return sorted(p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml"))


@pytest.mark.slow
def test_a_sweep_of_ddp_jobs_trains_each_job_on_every_rank_with_its_settings(tiny_mnist, tmp_path):
    """Lightning starts a job's other rank by running the command line again: the whole sweep's.
    Each job's ranks train that job alone, in its directory, with its learning rate."""
    proc = run([*PYTHON, "-m", "src.train", "-m", "+experiment=mnist_sgd", "trainer=ddp_cpu",
                f"data.data_dir={tiny_mnist}", *TINY, "optimizer.lr=0.1,0.01",
                *losses_callback("${paths.output_dir}/ranks")], cwd=tmp_path)  # fmt: skip
    assert proc.stdout.count("Launching 2 jobs") == 1  # no rank ran the sweep again
    (sweep_dir,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    assert not (tmp_path / "outputs" / "runs").exists()
    jobs = job_dirs(sweep_dir)
    assert len(jobs) == 2 and len(list(tmp_path.rglob("metrics.json"))) == 2
    rates = set()
    for job in jobs:
        metrics = read_metrics(job)
        assert metrics["status"] == "completed" and metrics["steps"] == 8
        (lr,) = [float(o[13:]) for o in metrics["overrides"] if o.startswith("optimizer.lr=")]
        ranks_wrote = rank_losses(job / "ranks")
        assert {wrote["lr"] for wrote in ranks_wrote.values()} == {lr}
        assert_mean_over_ranks(metrics, ranks_wrote, ranks=2)
        assert (job / "train_ddp_process_1.log").is_file()
        rates.add(lr)
    assert rates == {0.1, 0.01}
    summary = (sweep_dir / "summary.csv").read_text()
    assert "optimizer.lr=0.1," in summary and "optimizer.lr=0.01," in summary


def files(job: Path) -> set[str]:
    """What a job directory holds, by relative path; TensorBoard's event files (named by time,
    host and process, one more for each resume) as one."""
    names = {p.relative_to(job).as_posix() for p in job.rglob("*")}
    return {"events.out.tfevents.*" if n.startswith("events.out.tfevents.") else n for n in names}


def by_lr(sweep_dir: Path) -> dict[str, Path]:
    """A sweep's job directories by the learning rate each was given."""
    jobs = {}
    for job in job_dirs(sweep_dir):
        overrides = (job / ".hydra" / "overrides.yaml").read_text()
        (lr,) = [line.split("=")[1] for line in overrides.splitlines() if "optimizer.lr=" in line]
        jobs[lr] = job
    return jobs


@pytest.mark.slow
def test_submitit_local_runs_a_grid_and_a_job_it_timed_out_continues_when_run_again(tmp_path):
    """submitit's local executor, the code path of SLURM's without a cluster: each job a process
    of its own, warned of its time limit by submitit's signal 30 s before it (timeout_min=1).
    Both jobs are slowed by a test callback while a file exists, so they are surely training
    then; removed, the sweep run again continues them at full speed."""
    slow = tmp_path / "slow"
    slow.touch()
    grid = ["-m", "+experiment=nand", "optimizer.lr=0.5,1.0", "data.steps_per_epoch=500",
            "trainer.max_steps=1000", "trainer.max_epochs=2", "+callbacks.slow.seconds=0.05",
            "+callbacks.slow._target_=tests.slow_steps.SlowSteps"]  # fmt: skip
    train = [*PYTHON, "-m", "src.train", *grid]
    submitit = [*train, f"+callbacks.slow.while_exists={slow}", "hydra/launcher=submitit_local",
                "hydra.launcher.timeout_min=1",
                f"hydra.sweep.dir={tmp_path / 'submitit'}"]  # fmt: skip
    # The same grid under Hydra's basic launcher, never slowed, while submitit's jobs wait.
    basic = subprocess.Popen(
        [*train, f"+callbacks.slow.while_exists={tmp_path / 'never'}",
         f"hydra.sweep.dir={tmp_path / 'basic'}"],
        cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    run(submitit, cwd=tmp_path)
    assert basic.wait(timeout=300) == 0, basic.stderr.read()[-3000:]
    timed_out = by_lr(tmp_path / "submitit")
    assert sorted(timed_out) == ["0.5", "1.0"]
    for job in timed_out.values():
        record = read_metrics(job)
        assert record["status"] == "interrupted" and 0 < record["steps"] < 1000
        assert record["error"] == f"stopped by SIGTERM at step {record['steps']}"
        assert (job / record["checkpoint"]).is_file()
    summary = (tmp_path / "submitit" / "summary.csv").read_text()
    assert summary.count(",interrupted,") == 2

    slow.unlink()
    # The same sweep again, with time to finish however loaded the machine (the limit was seen).
    run([*submitit, "hydra.launcher.timeout_min=10"], cwd=tmp_path)
    finished, uninterrupted = by_lr(tmp_path / "submitit"), by_lr(tmp_path / "basic")
    assert finished == timed_out and sorted(uninterrupted) == ["0.5", "1.0"]
    for lr, job in finished.items():
        record, whole = read_metrics(job), read_metrics(uninterrupted[lr])
        assert record["status"] == whole["status"] == "completed"
        assert record["resumed_from"] == str(job / "checkpoints" / "last.ckpt")
        for key in ("train/loss", "val/loss", "test/loss", "test/acc", "steps", "epochs"):
            assert record[key] == pytest.approx(whole[key], rel=1e-6), (lr, key)
        assert files(job) == files(uninterrupted[lr])
    summary = (tmp_path / "submitit" / "summary.csv").read_text()
    assert summary.count(",completed,") == 2


SQLALCHEMY = version("SQLAlchemy")


@pytest.mark.slow
@pytest.mark.skipif(not SQLALCHEMY.startswith("1."),
                    reason=f"SQLAlchemy {SQLALCHEMY} is installed: Optuna 2.10's storage needs "
                    "SQLAlchemy 1 (pip install -e .[optuna], as make test does)")  # fmt: skip
def test_optuna_workers_share_one_study_in_one_sqlite_file(tmp_path):
    """Two workers started together against one SQLite file and one study name, each with its
    own sampler seed, into one sweep directory: every trial is drawn and trained once, in a job
    directory of its own, and the study's best trial is reported once, over both workers."""
    import optuna

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    search = [*PYTHON, "-m", "src.train", "+experiment=nand", "hparams_search=nand_optuna",
              "data.steps_per_epoch=100", "trainer.max_steps=200", "trainer.max_epochs=2",
              "hydra.sweeper.n_trials=2", f"hydra.sweeper.storage={storage}",
              "hydra.sweeper.study_name=nand", f"hydra.sweep.dir={tmp_path / 'sweep'}"]  # fmt: skip
    workers = [subprocess.Popen([*search, f"hydra.sweeper.sampler.seed={seed}"], cwd=tmp_path,
                                env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True) for seed in (1, 2)]  # fmt: skip
    for worker in workers:
        assert worker.wait(timeout=300) == 0, worker.stderr.read()[-3000:]

    study = optuna.load_study(study_name="nand", storage=storage)
    trials = study.trials
    assert sorted(t.number for t in trials) == list(range(4))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    drawn = {(t.params["optimizer.lr"], t.params["model.net.hidden_dim"]) for t in trials}
    assert len(drawn) == 4  # no trial drawn twice
    jobs = job_dirs(tmp_path / "sweep")
    assert len(jobs) == 4 and len(list(tmp_path.rglob("metrics.json"))) == 4
    for trial in trials:  # each trial trained in a directory of its own, its value its record's
        (job,) = [job for job in jobs if trained_with(read_metrics(job), trial.params)]
        assert read_metrics(job)["val/loss"] == pytest.approx(trial.value, rel=1e-9)
    best = study.best_trial
    report = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert report == {"name": "optuna", "best_params": best.params, "best_value": best.value,
                      "best_trial": best.number, "trials": 4}  # fmt: skip
    summary = (tmp_path / "sweep" / "summary.csv").read_text().splitlines()
    assert len(summary) == 5 and f"optimizer.lr={best.params['optimizer.lr']} " in summary[1]

    # A third worker with a seed already taken would draw the first one's trials again.
    proc = subprocess.run([*search, "hydra.sweeper.sampler.seed=1"], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: hydra.sweeper.sampler.seed=1 is taken in study nand of {storage} (by another "
        "worker, or an earlier search), whose trials this one would draw again: give each "
        "worker a seed of its own, or null"
    ]
    assert len(optuna.load_study(study_name="nand", storage=storage).trials) == 4


def trained_with(record: dict, params: dict) -> bool:
    """Whether a job's record names exactly these trial parameters among its overrides."""
    given = dict(o.split("=", 1) for o in record["overrides"])
    return all(key in given and float(given[key]) == float(value) for key, value in params.items())


@pytest.mark.slow
@pytest.mark.skipif(SQLALCHEMY.startswith("1."), reason="SQLAlchemy 1 opens the storage")
def test_a_storage_optuna_cannot_open_under_sqlalchemy_2_is_refused_in_one_line(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    proc = subprocess.run(
        [*PYTHON, "-m", "src.train", "+experiment=nand", "hparams_search=nand_optuna",
         f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=nand",
         f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: hydra.sweeper.storage={storage} needs SQLAlchemy 1 with Optuna 2.10, whose "
        f"storage cannot record its schema under SQLAlchemy {SQLALCHEMY}: pip install -e "
        ".[optuna] installs it"
    ]
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "study.db").exists()
