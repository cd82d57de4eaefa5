"""Hydra multiruns end to end: job directories named by their settings, the summary, failing jobs,
and sweeps run again: by settings, never by position, and never trusting a damaged record."""

import csv
import os
import subprocess

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from tests.conftest import PYTHON, REPO, read_metrics
from tests.test_train import load_events, read_hparams

pytestmark = pytest.mark.slow  # every test here trains

# Rates at which both optimizers learn these tiny files (Adam at 0.1 blows its loss up to 8
# times the first: diverged).
GRID = ("optimizer=sgd,adam", "optimizer.lr=0.01,0.001")


def run_sweep(tiny_mnist, *overrides, cwd=REPO) -> subprocess.CompletedProcess:
    cmd = [
        *PYTHON, "-m", "src.train", "-m", "+experiment=mnist_sgd",
        f"data.data_dir={tiny_mnist}", "data.val_size=100", "trainer.max_epochs=1",
        "trainer.log_every_n_steps=1", *overrides,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def read_summary(sweep_dir):
    with open(sweep_dir / "summary.csv") as f:
        return list(csv.DictReader(f))


def jobs(sweep_dir) -> dict[str, dict]:
    """The summary's rows by their label (the overrides that differ between jobs)."""
    return {row["overrides"]: row for row in read_summary(sweep_dir)}


def job_dir(sweep_dir, label: str):
    return sweep_dir / jobs(sweep_dir)[label]["job"]


SHARED_RUNS = ("sweep",)  # runs several tests read: each made once (conftest.py)


@pytest.fixture(scope="module")
def sweep(tiny_mnist, tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("sweep")
    proc = run_sweep(tiny_mnist, *GRID, f"hydra.sweep.dir={sweep_dir}")
    return sweep_dir, proc


def test_every_job_has_a_directory_named_by_what_tells_it_apart(sweep, tiny_mnist):
    sweep_dir, _ = sweep
    names = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir())
    # The swept settings alone: the experiment, data and epochs every job shares are in its
    # record, so TensorBoard's run list shows the difference first.
    assert names == [
        "optimizer.lr=0.001,optimizer=adam", "optimizer.lr=0.001,optimizer=sgd",
        "optimizer.lr=0.01,optimizer=adam", "optimizer.lr=0.01,optimizer=sgd",
    ]  # fmt: skip
    for name in names:
        overrides = read_metrics(sweep_dir / name)["overrides"]
        assert f"data.data_dir={tiny_mnist}" in overrides and "+experiment=mnist_sgd" in overrides
    seen = set()
    for name in names:
        metrics = read_metrics(sweep_dir / name)
        assert metrics["status"] == "completed" and metrics["steps"] == 8
        events = EventAccumulator(str(sweep_dir / name), size_guidance={"scalars": 0})
        events.Reload()
        assert len(events.Scalars("train/loss_step")) == 8
        assert len(events.Scalars("val/acc")) == 1
        params = read_hparams(events)
        seen.add((params["optimizer"], params["optimizer.lr"]))
        # The record says which settings it belongs to.
        assert f"optimizer.lr={params['optimizer.lr']}" in metrics["overrides"]
    assert seen == {
        ("SGD", 0.01), ("SGD", 0.001), ("Adam", 0.01), ("Adam", 0.001),
    }  # fmt: skip


def test_hparams_opens_on_what_tells_the_jobs_apart_then_the_experiments_metric(sweep):
    sweep_dir, _ = sweep
    (columns,) = sweep_dir.glob("events.out.tfevents.*.sweep-columns")  # one, rewritten each end
    events = EventAccumulator(str(sweep_dir))
    events.Reload()
    content = events.PluginTagToContent("hparams")["_hparams_/experiment"]
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content).experiment
    names = [info.name for info in experiment.hparam_infos]
    # The settings every job has first; then those of one optimizer only (momentum, betas, ...).
    assert names[:2] == ["optimizer", "optimizer.lr"]
    assert "optimizer.betas" in names and "optimizer.momentum" in names
    assert not {"experiment", "seed", "data.batch_size", "model.net"} & set(names)  # shared
    assert [info.name.tag for info in experiment.metric_infos] == [
        "val/acc", "val/loss", "test/loss", "test/acc", "test/ece", "train/loss", "train/acc",
    ]  # fmt: skip
    for job in (p for p in sweep_dir.iterdir() if p.is_dir()):
        start = plugin_data_pb2.HParamsPluginData.FromString(
            load_events(job).PluginTagToContent("hparams")["_hparams_/session_start_info"]
        ).session_start_info
        assert start.group_name == f"{job.name} in {sweep_dir.resolve()}"  # the row's name


def test_a_sweep_of_other_shared_settings_is_refused_its_folder(sweep, tiny_mnist):
    sweep_dir, _ = sweep
    before = sorted((p.name, p.stat().st_mtime_ns) for p in sweep_dir.rglob("*"))
    cmd = [*PYTHON, "-m", "src.train", "-m", "+experiment=mnist_sgd",
           f"data.data_dir={tiny_mnist}", "data.val_size=100", "trainer.max_epochs=2",
           "trainer.log_every_n_steps=1", *GRID, f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: hydra.sweep.dir={sweep_dir} holds a sweep of other settings")
    assert "trainer.max_epochs=1" in line and "trainer.max_epochs=2" in line
    assert sorted((p.name, p.stat().st_mtime_ns) for p in sweep_dir.rglob("*")) == before


def test_summary_lists_every_job_best_first_by_the_experiments_metric(sweep):
    sweep_dir, proc = sweep
    rows = read_summary(sweep_dir)
    assert list(rows[0]) == ["overrides", "val/acc", "val/loss", "test/acc", "train/loss",
                             "parameters", "epoch_seconds", "fit_seconds", "status",
                             "job"]  # fmt: skip
    assert {row["overrides"] for row in rows} == {
        "optimizer=sgd optimizer.lr=0.01", "optimizer=sgd optimizer.lr=0.001",
        "optimizer=adam optimizer.lr=0.01", "optimizer=adam optimizer.lr=0.001",
    }  # fmt: skip
    val_accs = [float(row["val/acc"]) for row in rows]
    assert val_accs == sorted(val_accs, reverse=True)
    for row in rows:
        metrics = read_metrics(sweep_dir / row["job"])
        assert float(row["test/acc"]) == pytest.approx(metrics["test/acc"])
        assert float(row["fit_seconds"]) == pytest.approx(metrics["fit_seconds"])
        assert int(row["parameters"]) == metrics["parameters"] == 101_770
        per_epoch = metrics["train_seconds"] / metrics["epochs"]
        assert float(row["epoch_seconds"]) == pytest.approx(per_epoch, abs=0.01)
    table = (sweep_dir / "summary.md").read_text()
    assert table.count("\n") == 2 + 4 and "optimizer=adam optimizer.lr=0.01" in table
    assert table.splitlines()[2] in proc.stdout  # the best row is printed too
    png = (sweep_dir / "summary.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_a_diverging_job_does_not_end_the_sweep(tiny_mnist, tmp_path):
    run_sweep(tiny_mnist, "optimizer.lr=1e6,0.1", f"hydra.sweep.dir={tmp_path}")
    status = {label: row["status"] for label, row in jobs(tmp_path).items()}
    assert status == {"optimizer.lr=1000000.0": "diverged", "optimizer.lr=0.1": "completed"}
    diverged = read_metrics(job_dir(tmp_path, "optimizer.lr=1000000.0"))
    assert diverged["status"] == "diverged" and "learning rate 1e+06" in diverged["error"]
    assert read_metrics(job_dir(tmp_path, "optimizer.lr=0.1"))["test/acc"] is not None


def test_a_failing_job_is_recorded_and_the_others_run(tiny_mnist, tmp_path):
    run_sweep(tiny_mnist, "model.net.activation=relu,swish", f"hydra.sweep.dir={tmp_path}")
    failed = read_metrics(job_dir(tmp_path, "model.net.activation=swish"))
    assert failed["status"] == "failed" and "model.net.activation='swish'" in failed["error"]
    assert read_metrics(job_dir(tmp_path, "model.net.activation=relu"))["status"] == "completed"
    assert [row["status"] for row in read_summary(tmp_path)] == ["completed", "failed"]


def nand_sweep(sweep_dir, values: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [*PYTHON, "-m", "src.train", "-m", "+experiment=nand", "data.steps_per_epoch=50",
         "trainer.max_steps=100", f"optimizer.lr={values}", f"hydra.sweep.dir={sweep_dir}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def records(sweep_dir) -> dict:
    """{job directory: (modification time, contents) of its metrics.json}."""
    return {p.parent.name: (p.stat().st_mtime_ns, p.read_text())
            for p in sweep_dir.glob("*/metrics.json")}  # fmt: skip


def test_a_sweep_run_again_finds_its_jobs_by_their_settings(tmp_path):
    """Values in another order, one added: the finished jobs are left as they are, each result
    stays with its own settings, and only the new setting is trained."""
    assert nand_sweep(tmp_path, "0.5,0.1").returncode == 0
    before = records(tmp_path)
    assert len(before) == 2
    proc = nand_sweep(tmp_path, "0.1,2.0,0.5")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    after = records(tmp_path)
    assert {name: after[name] for name in before} == before  # untouched
    assert proc.stdout.count("finished earlier (completed): left as it is") == 2
    rows = jobs(tmp_path)
    assert set(rows) == {"optimizer.lr=0.5", "optimizer.lr=0.1", "optimizer.lr=2.0"}
    # A gate sweep is ranked by its experiment's metric, the loss: lowest first.
    ranked = read_summary(tmp_path)
    assert list(ranked[0])[:2] == ["overrides", "val/loss"]
    losses = [float(row["val/loss"]) for row in ranked]
    assert losses == sorted(losses)
    assert {row["val/acc"] for row in ranked} <= {"1.0", "0.75", "0.5", "0.25", "0.0"}
    for label, row in rows.items():
        assert label in read_metrics(tmp_path / row["job"])["overrides"]
    # A finished job's log holds its whole life: its run, then the sweep that left it alone.
    log = (job_dir(tmp_path, "optimizer.lr=0.1") / "train.log").read_text()
    assert log.index("run directory:") < log.index("finished earlier (completed)")


def test_a_damaged_record_is_an_unfinished_job_never_a_crash(tmp_path):
    assert nand_sweep(tmp_path, "0.5,0.1,1.0").returncode == 0
    labels = ("optimizer.lr=0.5", "optimizer.lr=0.1", "optimizer.lr=1.0")
    empty, corrupt, missing = (job_dir(tmp_path, label) for label in labels)
    (empty / "metrics.json").write_text("")
    (corrupt / "metrics.json").write_text('{"status": "compl')
    (missing / "metrics.json").unlink()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    summary = subprocess.run([*PYTHON, "-m", "src.sweep", str(tmp_path)], cwd=REPO, env=env,
                             capture_output=True, text=True)  # fmt: skip
    assert summary.returncode == 0, summary.stderr
    assert {row["status"] for row in read_summary(tmp_path)} == {"unfinished"}
    report = subprocess.run([*PYTHON, "-m", "src.report", str(tmp_path)], cwd=REPO, env=env,
                            capture_output=True, text=True)  # fmt: skip
    assert report.returncode == 0, report.stderr
    # Run again, each continues from its last checkpoint: the run's whole life is recorded.
    proc = nand_sweep(tmp_path, "0.5,0.1,1.0")
    assert proc.returncode == 0 and proc.stdout.count("continuing an unfinished job") == 3
    for job in (empty, corrupt, missing):
        record = read_metrics(job)
        assert record["status"] == "completed" and record["steps"] == 100
        assert record["fit_seconds"] > 0 and record["resumed_from"].endswith("last.ckpt")


def test_summing_up_a_folder_without_jobs_is_refused(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([*PYTHON, "-m", "src.sweep", str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode != 0 and "holds no sweep jobs" in proc.stderr
    assert not (tmp_path / "summary.csv").exists()


def test_joblib_launcher_and_two_sweeps_at_once(tmp_path, tiny_mnist):
    """Two sweeps started together, each with two parallel jobs: four directories, no clash."""
    cmd = [
        *PYTHON, "-m", "src.train", "-m", "+experiment=nand", "data.steps_per_epoch=50",
        "trainer.max_steps=50", "seed=1,2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for _ in range(2)
    ]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stdout.read()
    sweeps = sorted((tmp_path / "outputs" / "multirun").glob("*/*"))
    assert len(sweeps) == 2
    for sweep_dir in sweeps:
        for seed in (1, 2):
            assert read_metrics(job_dir(sweep_dir, f"seed={seed}"))["seed"] == seed
        assert len(read_summary(sweep_dir)) == 2


def gate_sweep(sweep_dir, *overrides) -> list[str]:
    """A 3-job NAND sweep of 200 steps a job, as a command line."""
    return [*PYTHON, "-m", "src.train", "-m", "+experiment=nand", "data.steps_per_epoch=100",
            "trainer.max_steps=200", "optimizer.lr=0.5,0.1,1.0", f"hydra.sweep.dir={sweep_dir}",
            *overrides]  # fmt: skip


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_sweep_sent_sigterm_stops_and_the_same_command_continues_it(launcher, tmp_path):
    """The running jobs (one, or one per worker) are recorded interrupted with a checkpoint, no
    further job starts, the summary is written, the sweep exits with 143; run again, it goes on
    from those checkpoints and trains the rest."""
    parallel = ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2") if launcher == "joblib" else ()
    # The first job to reach step 150 sends it to the sweep's process, as `kill <pid>` would.
    sigterm = ("+callbacks.sigterm._target_=tests.signals.Sigterm", "+callbacks.sigterm.step=150",
               f"+callbacks.sigterm.to={'parent' if parallel else 'self'}",
               f"+callbacks.sigterm.once={tmp_path / 'sent'}")  # fmt: skip
    cmd = gate_sweep(tmp_path / "sweep", *parallel, *sigterm)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 143, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    running = 2 if parallel else 1
    rows = read_summary(tmp_path / "sweep")
    assert sorted(row["status"] for row in rows) == ["interrupted"] * running + ["unfinished"] * (
        3 - running
    )
    stopped = [tmp_path / "sweep" / row["job"] for row in rows if row["status"] == "interrupted"]
    for job in stopped:
        record = read_metrics(job)
        # A worker still setting its job up when the signal came stops it before training; one
        # that had trained its 200 steps (the other worker, on a busy machine), before testing.
        assert (
            record["error"] == "stopped by SIGTERM before training"
            or (
                record["error"].startswith("stopped by SIGTERM at step")
                and 0 < record["steps"] < 200
            )
            or (record["error"] == "stopped by SIGTERM before testing" and record["steps"] == 200)
        ), record["error"]
        assert (job / "checkpoints" / "last.ckpt").is_file() == (record["steps"] > 0)
    saved = [job for job in stopped if (job / "checkpoints" / "last.ckpt").is_file()]
    assert saved  # the job that sent the signal, at least
    for row in rows:
        if row["status"] == "unfinished":  # not started: Hydra made its folder, nothing more
            job = tmp_path / "sweep" / row["job"]
            assert (
                "not started: the sweep was stopped by SIGTERM" in (job / "train.log").read_text()
            )
            assert not (job / "checkpoints").exists() and not list(job.glob("events.*"))

    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = read_summary(tmp_path / "sweep")
    assert [row["status"] for row in rows] == ["completed"] * 3
    for job in (tmp_path / "sweep" / row["job"] for row in rows):
        record = read_metrics(job)
        assert record["steps"] == 200
        assert ("resumed_from" in record) == (job in saved)


def test_two_sweeps_into_one_folder_train_each_job_once(tmp_path):
    """Started together into one hydra.sweep.dir, two sweeps reach the same jobs: a job folder
    has one writer at a time, and the other process skips it while it is busy."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = gate_sweep(tmp_path)
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]  # fmt: skip
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    rows = read_summary(tmp_path)
    assert len(rows) == 3
    for job in (tmp_path / row["job"] for row in rows):
        assert read_metrics(job)["status"] == "completed"
        # events.out.tfevents.<time>.<host>.<pid>.<n>: every event file from one process
        assert len({name.name.split(".")[-2] for name in job.glob("events.*")}) == 1
        log = (job / "train.log").read_text()
        assert log.count("run directory:") == 1 and "continuing an unfinished job" not in log
    said = "".join(outputs).count("is being trained by another process: skipped here")
    assert said == sum(log.count("skipped here") for log in
                       (p.read_text() for p in tmp_path.glob("*/train.log")))  # fmt: skip


def test_optuna_search_returns_the_optimized_metric(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [
        *PYTHON, "-m", "src.train", "-m", "+experiment=nand", "hparams_search=nand_optuna",
        "hydra.sweeper.n_trials=2", "data.steps_per_epoch=100", "trainer.max_steps=100",
        f"hydra.sweep.dir={tmp_path}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = (tmp_path / "optimization_results.yaml").read_text()
    best = min(read_metrics(tmp_path / row["job"])["val/loss"] for row in read_summary(tmp_path))
    assert f"best_value: {best}" in results
