"""What a person reads of a run, from the real commands: the progress bar in a file and on a
terminal, the end-of-run table of a long run, the CSV's epoch numbers, and none of the library
messages src/console.py leaves out, wherever they used to appear."""

import copy
import csv
import fcntl
import importlib.util
import os
import pty
import re
import struct
import subprocess
import termios

import pytest

from tests.conftest import PYTHON, REPO, read_metrics

pytestmark = pytest.mark.slow  # every test here trains

ENV = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "1"}
# A bar's line: its description, then `NN%|...| n/total [elapsed<remaining, rate, metrics]`.
BAR = re.compile(r"^(?P<desc>[^\r\n]*?): +\d+%\|[^|\n]*\| (?P<n>\d+)/(?P<total>\d+) \[[^\n]*\]$")


def run_to_file(module: str, *args: str, path, env=None) -> tuple[int, str]:
    """Run `python -m <module>` as `... > path 2>&1` runs it: stdout and stderr into one file."""
    with open(path, "wb") as out:
        proc = subprocess.run([*PYTHON, "-m", module, *args], cwd=REPO, env=env or ENV,
                              stdout=out, stderr=subprocess.STDOUT, timeout=600)  # fmt: skip
    return proc.returncode, path.read_bytes().decode()


def tiny(tiny_mnist, *overrides: str) -> tuple[str, ...]:
    """The primer's MNIST run on the 600-image fixture: 500 training images, 100 validation."""
    return ("+experiment=mnist_sgd", f"data.data_dir={tiny_mnist}", "data.val_size=100",
            *overrides)  # fmt: skip


SHARED_RUNS = ("long_run",)  # runs several tests read: each made once (conftest.py)


@pytest.fixture(scope="module")
def long_run(tiny_mnist, tmp_path_factory):
    """+debug=overfit (5 batches an epoch) for 26 epochs, into a file, with the CSV logger."""
    run_dir = tmp_path_factory.mktemp("long_run")
    overrides = tiny(tiny_mnist, "+debug=overfit", "trainer.max_epochs=26",
                     "callbacks.progress_bar.refresh_rate=2", "logger=many",
                     f"hydra.run.dir={run_dir}")  # fmt: skip
    rc, out = run_to_file("src.train", *overrides, path=run_dir.parent / "long_run.log")
    assert rc == 0, out
    return run_dir, out


def test_in_a_file_each_refresh_is_one_line_of_its_own(long_run):
    run_dir, out = long_run
    assert "\r" not in out and "\x1b" not in out  # nothing redrawn in place, no cursor moves
    bars = [(m["desc"], int(m["n"]), int(m["total"]))
            for m in map(BAR.match, out.splitlines()) if m]  # fmt: skip
    # Every 2 batches and an epoch's last, which waits for the epoch's validation; each once.
    expected = [("Sanity Checking DataLoader 0", 1, 1)]
    for epoch in range(1, 27):
        expected += [(f"Epoch {epoch}/26", 2, 5), (f"Epoch {epoch}/26", 4, 5),
                     ("Validation DataLoader 0", 1, 1), (f"Epoch {epoch}/26", 5, 5)]  # fmt: skip
    expected.append(("Testing DataLoader 0", 1, 1))
    assert bars == expected
    assert "Epoch 0" not in out
    last = [line for line in out.splitlines() if line.startswith("Epoch 26/26: 100%")]
    assert len(last) == 1 and "val/loss=" in last[0] and "train/loss=" in last[0]
    # Log lines start lines of their own, the first loss's too.
    assert re.search(r"^\[[^]]+\]\[src\.modules\.supervised\]\[INFO\] - first loss 2\.\d\d",
                     out, re.MULTILINE)  # fmt: skip
    # The bar is the console's only: train.log has the run's messages, and no bar.
    log = (run_dir / "train.log").read_text()
    assert "first loss" in log and "results:" in log and "Epoch 1/26" not in log


def test_a_long_table_shows_about_twenty_epochs_and_the_csv_counts_from_1(long_run):
    run_dir, out = long_run
    table = out.split("results:\n")[1].splitlines()
    assert table[0].split()[:2] == ["epoch", "loss"]
    shown = [int(line.split()[0]) for line in table[1:15]]
    assert shown == [1, *range(2, 27, 2)]
    assert table[15] == ("(14 of 26 epochs: the first, the last and one in 2; the logged curves "
                         "have them all)")  # fmt: skip
    assert table[16].startswith("test/loss: ")
    # Every epoch is in the CSV, numbered as the table numbers them; the test set's row has
    # the last epoch trained.
    (path,) = run_dir.glob("csv/version_*/metrics.csv")
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    for key in ("train/loss", "val/acc"):
        assert [int(row["epoch"]) for row in rows if row[key]] == list(range(1, 27)), key
    (tested,) = [row for row in rows if row["test/acc"]]
    assert int(tested["epoch"]) == 26 == read_metrics(run_dir)["epochs"]
    assert float(tested["test/acc"]) == pytest.approx(read_metrics(run_dir)["test/acc"])


def test_on_a_terminal_the_bar_is_lightnings_redrawn_in_place(tiny_mnist, tmp_path):
    """The same command on a pseudo-terminal: Lightning's bar, as it draws it."""
    primary, secondary = pty.openpty()
    # 120 columns: a new pseudo-terminal has none, where tqdm would draw bars of no width.
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        [*PYTHON, "-m", "src.train", *tiny(tiny_mnist, "trainer.max_epochs=1",
                                                  f"hydra.run.dir={tmp_path}")],
        cwd=REPO, env=ENV, stdin=secondary, stdout=secondary, stderr=secondary,
    )  # fmt: skip
    os.close(secondary)
    out = b""
    while True:
        try:
            data = os.read(primary, 1 << 16)
        except OSError:  # the terminal closed with the process (EIO)
            break
        if not data:
            break
        out += data
    os.close(primary)
    assert proc.wait(timeout=600) == 0, out.decode()
    text = out.decode()
    assert "\rEpoch 1/1: 100%" in text  # redrawn in place, on its own line
    assert "\x1b[A" in text  # the validation bar drawn below it, as Lightning places it
    assert "run directory:" in text


def test_resumes_a_stop_and_lr_find_say_nothing_of_lightnings_own(tiny_mnist, tmp_path):
    """SIGTERM after lr_find, a resume in the run's own directory, one in a new directory and
    src.eval of its checkpoint: each run's own messages, and none of the library's notes."""
    env = {**ENV, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}  # said by any load not weights-only
    stopped, moved = tmp_path / "stopped", tmp_path / "moved"
    ckpt = stopped / "checkpoints" / "last.ckpt"
    outs = {}
    rc, outs["stop"] = run_to_file(
        "src.train", *tiny(tiny_mnist, "trainer.max_epochs=2", "lr_find=true",
                           "+callbacks.sigterm._target_=tests.signals.Sigterm",
                           "+callbacks.sigterm.step=10", f"hydra.run.dir={stopped}"),
        path=tmp_path / "stop.log", env=env,
    )  # fmt: skip
    assert rc == 143, outs["stop"]
    assert "learning-rate finder suggests" in outs["stop"]
    assert "stopped by SIGTERM at step 10" in outs["stop"]
    rc, outs["same"] = run_to_file(
        "src.train", *tiny(tiny_mnist, "trainer.max_epochs=2", f"ckpt_path={ckpt}",
                           f"hydra.run.dir={stopped}"),
        path=tmp_path / "same.log", env=env,
    )  # fmt: skip
    assert rc == 0, outs["same"]
    assert read_metrics(stopped)["status"] == "completed"
    assert "resuming with changed settings: callbacks.sigterm._target_" in outs["same"]
    rc, outs["moved"] = run_to_file(
        "src.train", *tiny(tiny_mnist, "trainer.max_epochs=3", f"ckpt_path={ckpt}",
                           f"hydra.run.dir={moved}"),
        path=tmp_path / "moved.log", env=env,
    )  # fmt: skip
    assert rc == 0, outs["moved"]
    table = outs["moved"].split("results:\n")[1].splitlines()
    assert [line.split()[0] for line in table[1:4]] == ["1", "2", "3"]
    # A new directory's best checkpoint is the best of the epochs trained there.
    assert [p.name for p in (moved / "checkpoints").glob("best-*")] == ["best-epoch03.ckpt"]
    rc, outs["eval"] = run_to_file(
        "src.eval", f"ckpt_path={moved / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={tmp_path / 'eval'}", path=tmp_path / "eval.log", env=env,
    )  # fmt: skip
    assert rc == 0, outs["eval"]
    assert re.search(r"test/acc [01]\.\d{4}, test/ece", outs["eval"])
    for noise in ("litlogger", "LeafSpec", "`weights_only` was not set",
                  "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "The dirpath has changed",
                  "exists and is not empty"):  # fmt: skip
        for name, out in outs.items():
            assert noise not in out, (name, noise)


@pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None,
    reason="Optuna's sweeper is an optional extra: pip install -e .[optuna]",
)
def test_an_optuna_sweep_and_its_report_say_nothing_of_their_libraries(tmp_path):
    """An Optuna search of one trial, then src.report of it where matplotlib's font list lacks
    the math fonts (a distribution's matplotlib, a font cache made by another one)."""
    from matplotlib import font_manager

    sweep = tmp_path / "sweep"
    rc, out = run_to_file(
        "src.train", "+experiment=nand", "hparams_search=nand_optuna",
        "hydra.sweeper.n_trials=1", "trainer.max_epochs=2", "trainer.max_steps=20",
        "data.steps_per_epoch=10", f"hydra.sweep.dir={sweep}", path=tmp_path / "sweep.log",
    )  # fmt: skip
    assert rc == 0, out
    assert "Sampler: TPESampler" in out and "sweep summary (best first)" in out
    assert "setup plugin" not in out and "alembic" not in out
    fonts = copy.deepcopy(font_manager.fontManager)
    fonts.ttflist = [font for font in fonts.ttflist if not font.name.startswith("cm")]
    config = tmp_path / "matplotlib"
    config.mkdir()
    font_manager.json_dump(fonts, config / f"fontlist-v{font_manager.FontManager.__version__}.json")
    rc, out = run_to_file("src.report", str(sweep), path=tmp_path / "report.log",
                          env={**ENV, "MPLCONFIGDIR": str(config)})  # fmt: skip
    assert rc == 0, out
    assert f"wrote {sweep / 'report.md'}" in out and "findfont" not in out
    assert (sweep / "train_loss.png").stat().st_size > 10_000
