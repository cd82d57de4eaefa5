"""Stopped runs keep their work: SIGTERM, checkpoints that hold the latest weights, tests of a
checkpoint that exists, resumes that say what changed, one run per directory."""

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import PYTHON, make_mnist_files, read_metrics, run_train

pytestmark = pytest.mark.slow  # every test here trains

NUMBERS = ("train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc", "steps",
           "epochs")  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """2800 training images in batches of 64: 44 steps per epoch."""
    return make_mnist_files(tmp_path_factory.mktemp("data"), n_train=3000, n_test=200)


@pytest.fixture(scope="module")
def base(data):
    return ("+experiment=mnist_sgd", f"data.data_dir={data}", "data.val_size=200",
            "trainer.max_epochs=3")  # fmt: skip


SHARED_RUNS = ("uninterrupted",)  # runs several tests read: each made once (conftest.py)


@pytest.fixture(scope="module")
def uninterrupted(base, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    run_train(*base, f"hydra.run.dir={run_dir}")
    return {**read_metrics(run_dir), "folder": run_dir}


def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of every TensorBoard event file of a run, read by TensorBoard."""
    points = {}
    for events in sorted(run_dir.rglob("events.out.tfevents.*")):
        reader = EventAccumulator(str(events))
        reader.Reload()
        for tag in reader.Tags()["scalars"]:
            points.setdefault(tag, []).extend((e.step, e.value) for e in reader.Scalars(tag))
    return points


@pytest.mark.parametrize(("stop", "steps", "limit"), [
    ({"epoch": 1, "at": "end"}, 44, ()),  # as epoch 1 ends: the run stops between epochs
    # With max_steps Lightning resumes any checkpoint as a restart inside an epoch (stop.py).
    ({"epoch": 1, "at": "end"}, 44, ("trainer.max_steps=132",)),
    ({"epoch": 2, "at": "start"}, 45, ()),  # as epoch 2 starts: the run stops after one step
    ({"step": 70}, 70, ()),  # in the middle of epoch 2, 26 steps in
])  # fmt: skip
def test_sigterm_saves_the_moment_and_the_resumed_run_ends_as_if_never_stopped(
    stop, steps, limit, base, uninterrupted, tmp_path
):
    """A stopped run says so, keeps a checkpoint of that moment, and its resume ends exactly like
    a run never stopped, between epochs or in the middle of one, to its curves' steps."""
    run_dir, base = tmp_path / "stopped", (*base, *limit)
    sigterm = ("+callbacks.sigterm._target_=tests.signals.Sigterm",
               *(f"+callbacks.sigterm.{key}={value}" for key, value in stop.items()))  # fmt: skip
    proc = run_train(*base, *sigterm, f"hydra.run.dir={run_dir}", check=False)
    assert proc.returncode == 143, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "`weights_only` was not set" not in proc.stdout  # the stop's checkpoint says so itself
    stopped = read_metrics(run_dir)
    assert stopped["status"] == "interrupted" and stopped["steps"] == steps
    assert stopped["error"] == f"stopped by SIGTERM at step {steps}"
    assert stopped["checkpoint"] == "checkpoints/last.ckpt" and "test/acc" not in stopped
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["global_step"] == steps
    # What a checkpoint holds of an epoch does not grow with it: one taken 26 steps into the
    # second epoch is the size of the one taken at the end of the first (a few bytes of names).
    (best,) = (run_dir / "checkpoints").glob("best-epoch*.ckpt")
    assert abs(ckpt.stat().st_size - best.stat().st_size) < 200
    # Resumed into the same directory (the run's own), without the signal.
    proc = run_train(*base, f"ckpt_path={ckpt}", f"hydra.run.dir={run_dir}")
    resumed = read_metrics(run_dir)
    assert {k: resumed[k] for k in NUMBERS} == {k: uninterrupted[k] for k in NUMBERS}
    assert resumed["first_loss"] == uninterrupted["first_loss"]  # carried by the checkpoint
    assert resumed["resumed_from"] == str(ckpt)
    assert resumed["changed_on_resume"] == {
        "callbacks.sigterm._target_": ["tests.signals.Sigterm", None],
        **{f"callbacks.sigterm.{key}": [value, None] for key, value in stop.items()},
    }
    # The epoch table has each epoch once; fit_seconds covers both fits.
    table = proc.stdout.split("results:\n")[1].splitlines()
    assert [line.split()[0] for line in table[1:4]] == ["1", "2", "3"]
    assert table[4].startswith("test/loss")
    assert resumed["fit_seconds"] > stopped["fit_seconds"] > 0
    undisturbed = scalars(uninterrupted["folder"])
    for tag in ("val/loss", "train/loss"):
        assert scalars(run_dir)[tag] == undisturbed[tag], tag


@pytest.mark.parametrize(("at", "said"), [
    ("fit_end", "stopped by SIGTERM before testing"),  # Lightning's own handler is gone by then
    ("test", "stopped by SIGTERM while testing"),  # Lightning tests on through a SIGTERM
])  # fmt: skip
def test_sigterm_after_training_is_recorded_and_the_resume_tests(
    at, said, base, uninterrupted, tmp_path
):
    """Between fit and test, or while testing, the run still says it was stopped, with status
    143, and its resume (nothing left to train) tests the same checkpoint."""
    run_dir = tmp_path / "stopped"
    proc = run_train(*base, "+callbacks.sigterm._target_=tests.signals.Sigterm",
                     f"+callbacks.sigterm.at={at}", f"hydra.run.dir={run_dir}",
                     check=False)  # fmt: skip
    assert proc.returncode == 143 and "Traceback" not in proc.stdout + proc.stderr
    stopped = read_metrics(run_dir)
    assert stopped["status"] == "interrupted" and "test/acc" not in stopped
    assert stopped["error"] == said and stopped["steps"] == uninterrupted["steps"]
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert f"resume with ckpt_path={ckpt}" in proc.stdout
    run_train(*base, f"ckpt_path={ckpt}", f"hydra.run.dir={run_dir}")
    resumed = read_metrics(run_dir)
    assert resumed["status"] == "completed"
    assert {k: resumed[k] for k in NUMBERS} == {k: uninterrupted[k] for k in NUMBERS}


def test_last_checkpoint_holds_the_latest_epoch_even_when_it_is_not_the_best(base, tmp_path):
    # monitor.mode=min on val/acc: the first epoch stays "best", later ones do not improve it.
    run_train(*base, "monitor.mode=min", f"hydra.run.dir={tmp_path}")
    metrics = read_metrics(tmp_path)
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == metrics["steps"] == 3 * 44 and last["epoch"] == 2
    (best,) = (tmp_path / "checkpoints").glob("best-epoch*.ckpt")
    assert best.name == "best-epoch01.ckpt"  # epochs named from 1, as the table counts them


def test_the_test_numbers_are_those_of_a_checkpoint_that_exists(base, uninterrupted, tmp_path):
    import subprocess

    from tests.conftest import REPO

    run_dir = tmp_path / "run"
    run_train(*base, f"hydra.run.dir={run_dir}")
    metrics = read_metrics(run_dir)
    assert metrics["tested"] == "checkpoints/last.ckpt"
    proc = subprocess.run(
        [*PYTHON, "-m", "src.eval", f"ckpt_path={run_dir / metrics['tested']}",
         f"hydra.run.dir={tmp_path / 'eval'}"],
        cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, check=True,
        capture_output=True, text=True,
    )  # fmt: skip
    # What src.train leaves out of the console, src.eval does too (src/console.py).
    for noise in ("litlogger", "LeafSpec", "weights_only"):
        assert noise not in proc.stdout + proc.stderr, noise
    evaluated = read_metrics(tmp_path / "eval")
    assert (evaluated["test/acc"], evaluated["test/loss"]) == (metrics["test/acc"],
                                                               metrics["test/loss"])  # fmt: skip


def test_a_resume_applies_and_records_a_new_learning_rate(base, tmp_path):
    first = tmp_path / "first"
    run_train(*base, "trainer.max_epochs=1", f"hydra.run.dir={first}")
    ckpt = first / "checkpoints" / "last.ckpt"
    rest = tmp_path / "rest"
    proc = run_train(*base, f"ckpt_path={ckpt}", "optimizer.lr=0.1", f"hydra.run.dir={rest}")
    assert "resuming with changed settings: optimizer.lr: 0.01 → 0.1, trainer.max_epochs: 1 → 3" \
        in proc.stdout  # fmt: skip
    record = read_metrics(rest)
    assert record["changed_on_resume"] == {
        "optimizer.lr": [0.01, 0.1], "trainer.max_epochs": [1, 3],
    }  # fmt: skip
    events = EventAccumulator(str(rest), size_guidance={"scalars": 0})
    events.Reload()
    # The rate of the two resumed epochs is the new one, not the checkpoint's.
    lr = [(e.step, round(e.value, 6)) for e in events.Scalars("train/lr")]
    assert lr == [(44, 0.1), (88, 0.1)]


@pytest.fixture(scope="module")
def one_epoch(base, tmp_path_factory):
    """A run of one epoch, to resume from."""
    run_dir = tmp_path_factory.mktemp("one_epoch")
    run_train(*base, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}")
    return run_dir


@pytest.mark.parametrize(("change", "named"), [
    ("model.net.hidden_dim=64", "model.net.hidden_dim (128 → 64)"),
    ("optimizer=adam", "optimizer._target_ (torch.optim.SGD → torch.optim.Adam)"),
    ("data.normalize=true", "data.normalize (False → True)"),
])  # fmt: skip
def test_a_resume_refuses_what_the_checkpoint_cannot_follow(change, named, base, one_epoch,
                                                            tmp_path):  # fmt: skip
    ckpt = one_epoch / "checkpoints" / "last.ckpt"
    proc = run_train(*base, f"ckpt_path={ckpt}", change, f"hydra.run.dir={tmp_path / 'rest'}",
                     check=False)  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in output
    assert "which a resume cannot change: " in output and named in output
    assert not (tmp_path / "rest" / "metrics.json").exists()


def test_a_checkpoint_of_another_network_is_refused(base, tmp_path):
    gate = tmp_path / "gate"
    run_train("+experiment=nand", "data.steps_per_epoch=10", "trainer.max_steps=10",
              f"hydra.run.dir={gate}")  # fmt: skip
    ckpt = gate / "checkpoints" / "last.ckpt"
    # Its config travels with it: the settings it cannot follow are named.
    proc = run_train(*base, f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'a'}", check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in output
    assert "model._target_ (src.modules.GateModule → src.modules.DigitModule)" in output
    # A checkpoint that does not say its settings (another tool's, say): its weights do not fit.
    checkpoint = torch.load(ckpt, weights_only=True)
    del checkpoint["config"]
    torch.save(checkpoint, tmp_path / "foreign.ckpt")
    proc = run_train(*base, f"ckpt_path={tmp_path / 'foreign.ckpt'}",
                     f"hydra.run.dir={tmp_path / 'b'}", check=False)  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in output
    assert "foreign.ckpt holds the weights of another network (net.hidden.bias: (3,) there, " \
        "(128,) here)" in output  # fmt: skip


def test_a_run_directory_holds_one_run(base, tmp_path):
    run_dir = tmp_path / "run"
    run_train(*base, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}")
    before = (run_dir / ".hydra" / "config.yaml").read_text()
    proc = run_train(*base, "seed=7", f"hydra.run.dir={run_dir}", check=False)
    assert proc.returncode == 2
    assert f"hydra.run.dir={run_dir} holds another run (metrics.json, checkpoints)" in proc.stdout
    assert (run_dir / ".hydra" / "config.yaml").read_text() == before  # nothing was written
