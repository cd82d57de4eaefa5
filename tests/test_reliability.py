"""Resume, determinism, divergence, refusal of bad input, and DDP: each from a real run."""

import gzip
import os
import pickle
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import PYTHON, REPO, make_mnist_files, read_metrics, run_train, write_idx

NUMBERS = ("train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc", "steps")


def same_numbers(a: dict, b: dict) -> bool:
    return {k: a.get(k) for k in NUMBERS} == {k: b.get(k) for k in NUMBERS}


@pytest.fixture(scope="module")
def small_mnist(tmp_path_factory):
    """3000 training images: enough steps per epoch to kill a run between two checkpoints."""
    return make_mnist_files(tmp_path_factory.mktemp("small"), n_train=3000, n_test=200)


@pytest.fixture(scope="module")
def base(small_mnist):
    return ("+experiment=mnist_sgd", f"data.data_dir={small_mnist}", "data.val_size=200")


SHARED_RUNS = ("uninterrupted", "gate_run")  # runs several tests read: each made once (conftest.py)


@pytest.fixture(scope="module")
def uninterrupted(base, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("full")
    run_train(*base, "trainer.max_epochs=4", f"hydra.run.dir={run_dir}")
    return read_metrics(run_dir)


@pytest.mark.slow
def test_same_seed_twice_gives_identical_metrics(base, uninterrupted, tmp_path):
    run_train(*base, "trainer.max_epochs=4", f"hydra.run.dir={tmp_path}")
    again = read_metrics(tmp_path)
    assert same_numbers(again, uninterrupted), (again, uninterrupted)
    run_train(*base, "trainer.max_epochs=4", "seed=3", f"hydra.run.dir={tmp_path / 'other'}")
    assert read_metrics(tmp_path / "other")["train/loss"] != uninterrupted["train/loss"]


@pytest.mark.slow
def test_resume_from_last_checkpoint_ends_like_an_uninterrupted_run(base, uninterrupted, tmp_path):
    run_train(*base, "trainer.max_epochs=2", f"hydra.run.dir={tmp_path / 'first'}")
    ckpt = tmp_path / "first" / "checkpoints" / "last.ckpt"
    run_train(
        *base, "trainer.max_epochs=4", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'rest'}"
    )
    resumed = read_metrics(tmp_path / "rest")
    assert resumed["epochs"] == 4
    assert same_numbers(resumed, uninterrupted), (resumed, uninterrupted)


@pytest.mark.slow
def test_kill_9_then_resume_ends_like_an_uninterrupted_run(base, uninterrupted, tmp_path):
    run_dir = tmp_path / "killed"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    # The real interpreter: the process killed is the one that trains, not a client of PYTHON's.
    cmd = [
        sys.executable,
        "-m",
        "src.train",
        *base,
        "trainer.max_epochs=4",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "metrics.json").exists(), "the run finished before it could be killed"
    run_train(
        *base, "trainer.max_epochs=4", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'resumed'}"
    )
    assert same_numbers(read_metrics(tmp_path / "resumed"), uninterrupted)


@pytest.mark.slow
def test_divergence_stops_the_run_with_a_clear_message(base, tmp_path):
    overrides = ("optimizer.lr=1e6", "trainer.log_every_n_steps=8", f"hydra.run.dir={tmp_path}")
    proc = run_train(*base, *overrides, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1
    assert "Traceback" not in output
    metrics = read_metrics(tmp_path)
    assert metrics["status"] == "diverged"
    # Found at the first logging step (the 8th), before it is taken; not at the epoch's end.
    assert metrics["epochs"] == 0 and metrics["steps"] == 7
    step = int(re.search(r"at step (\d+) ", metrics["error"])[1])
    assert 1 <= step <= 8
    assert "learning rate 1e+06" in metrics["error"] and metrics["error"] in output
    assert "test/acc" not in metrics


@pytest.mark.slow
@pytest.mark.parametrize("task", ["mnist", "gates"])
def test_a_loss_that_explodes_is_caught_while_it_is_still_finite(task, base, tmp_path):
    """An epoch's training loss far above the first loss (more than twice) is divergence, before
    any number overflows: SGD at lr 1e6 on MNIST, and a gate net whose output is not bounded."""
    if task == "mnist":
        overrides = (*base, "optimizer.lr=1e6", "trainer.limit_train_batches=2")
    else:  # MSE of a plain linear unit: a learning rate past 2 / curvature blows it up
        overrides = ("+experiment=nand", "model/net=custom", "model.net._target_=torch.nn.Linear",
                     "+model.net.in_features=2", "+model.net.out_features=1", "optimizer.lr=2",
                     "data.steps_per_epoch=10", "trainer.max_steps=30")  # fmt: skip
    proc = run_train(*overrides, "trainer.max_epochs=3", f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    metrics = read_metrics(tmp_path)
    assert metrics["status"] == "diverged" and metrics["epochs"] == 0
    loss, first = metrics["train/loss"], metrics["first_loss"]
    assert 2 * first < loss < 1e38  # finite in float32, and caught at the end of epoch 1
    assert metrics["error"].startswith(
        f"train/loss of epoch 1 was {loss:.4g}, more than 2 times its first loss {first:.4g}"
    )
    assert "test/acc" not in metrics and metrics["error"] in proc.stdout + proc.stderr


def write_evil_checkpoint(path):
    """A torch.save archive whose unpickling would create a file (weights-only loading refuses)."""

    class Evil:
        def __reduce__(self):
            return (open, (str(path.parent / "pwned"), "w"))

    torch.save({"state_dict": Evil()}, path)


def truncated_mnist(root):
    make_mnist_files(root)
    images = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    return "train-images-idx3-ubyte is truncated or corrupt"


def wrong_shape_mnist(root):
    make_mnist_files(root)
    write_idx(root / "MNIST" / "raw" / "train-images-idx3-ubyte", np.zeros((600, 32, 32)))
    return "train-images-idx3-ubyte holds 600×32×32 values where MNIST's images are N×28×28"


def corrupt_gz_mnist(root):
    make_mnist_files(root)
    raw = root / "MNIST" / "raw"
    (raw / "t10k-labels-idx1-ubyte").unlink()
    with gzip.open(raw / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"not the official file")
    return "t10k-labels-idx1-ubyte.gz is corrupt: its MD5 is not the official"


def label_11_mnist(root):
    """Well-formed IDX files whose labels include an 11."""
    make_mnist_files(root, n_train=3000, n_test=200)
    labels = root / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    data = bytearray(labels.read_bytes())
    data[8 + 5] = 11  # the sixth label
    labels.write_bytes(bytes(data))
    return "train-labels-idx1-ubyte holds the label 11 (at index 5), not a class from 0 to 9"


def folder_for_a_file_mnist(root):
    make_mnist_files(root, n_train=3000, n_test=200)
    images = root / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    images.unlink()
    images.mkdir()
    return "t10k-images-idx3-ubyte cannot be read (Is a directory)"


def garbage_pickle_checkpoint(path):
    """A zip archive laid out like torch.save's, whose data.pkl is no pickle at all."""
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x05 these are not pickled objects")
        archive.writestr("archive/version", "3\n")
    return "WeightsUnpickler error"


# Each case: overrides, what the one line must say; PLACES in them are made by `prepare`.
BAD_INPUT = {
    "unknown optimizer": (
        ["optimizer=sgdd"],
        [
            "optimizer=sgdd is not one of: "
            + ", ".join(sorted(path.stem for path in (REPO / "conf" / "optimizer").glob("*.yaml")))
        ],
    ),
    "wrong type": (["optimizer.lr=abc"], ["optimizer.lr", "'abc'"]),
    "negative lr": (["optimizer.lr=-1"], ["optimizer.lr (torch.optim.SGD): Invalid learning rate"]),
    "infinite lr": (["optimizer.lr=inf"], ["optimizer.lr=inf", "must be a finite number > 0"]),
    "lr past a float": (["optimizer.lr=1e309"], ["optimizer.lr=inf", "finite number"]),
    "momentum of 2": (["optimizer.momentum=2"], ["optimizer.momentum=2.0", "in [0, 1)"]),
    "zero threads": (["threads=0"], ["threads=0", "at least 1 (or null)"]),
    "zero batch": (["data.batch_size=0"], ["data.batch_size=0", "at least 1"]),
    "val_check_interval": (
        ["trainer.val_check_interval=2.5"],
        ["trainer.val_check_interval (lightning.pytorch.Trainer)", "invalid value 2.5"],
    ),
    "limit_train_batches": (
        ["trainer.limit_train_batches=-1"],
        ["trainer.limit_train_batches (lightning.pytorch.Trainer)", "invalid value -1"],
    ),
    "accumulate": (["trainer.accumulate_grad_batches=0"], ["trainer.accumulate_grad_batches=0"]),
    "negative clip": (["trainer.gradient_clip_val=-1"], ["trainer.gradient_clip_val=-1.0", ">= 0"]),
    "unknown schedule": (["scheduler=cosinee"], ["scheduler=cosinee is not one of", "onecycle"]),
    "unknown trainer flag": (["+trainer.foo=1"], ["trainer.foo is not a setting"]),
    "epochs not a number": (["trainer.max_epochs=abc"], ["trainer.max_epochs", "'abc'"]),
    "negative epochs": (["trainer.max_epochs=-3"], ["trainer.max_epochs", "You passed in -3"]),
    "zero epochs": (["trainer.max_epochs=0"], ["trainer.max_epochs=0", "at least 1"]),
    "steps not a number": (["trainer.max_steps=abc"], ["trainer.max_steps", "'abc'"]),
    "no devices": (["trainer.devices=0"], ["trainer.devices", "`Trainer(devices=0)` value is not"]),
    "tpu": (["trainer.accelerator=tpu"], ["trainer (lightning.pytorch.Trainer)", "torch_xla"]),
    "unknown accelerator": (["trainer.accelerator=foo"], ["trainer.accelerator", "invalid accel"]),
    "seed not a number": (["seed=abc"], ["seed", "'abc'"]),
    "negative seed": (["seed=-1"], ["seed=-1", "[0, 2**32)"]),
    "fractional seed": (["seed=1.5"], ["seed", "'1.5'"]),
    "ckpt_path a number": (["ckpt_path=123"], ["ckpt_path=123 does not exist"]),
    "not a bool": (
        ["callbacks.digit_pictures.histograms=maybe"],
        ["callbacks.digit_pictures.histograms", "'maybe'"],
    ),
    "val too large": (["data.val_size=3000"], ["data.val_size=3000", "3000 images"]),
    "unknown key": (["optimizer.lrr=0.1"], ["optimizer.lrr"]),
    "unknown activation": (
        ["model.net.activation=swish"],
        ["model.net.activation='swish'", "gelu"],
    ),  # fmt: skip
    "missing ckpt": (["ckpt_path=/no/such/last.ckpt"], ["ckpt_path=/no/such/last.ckpt does not"]),
    "ckpt a folder": (["ckpt_path=EMPTY"], ["ckpt_path=EMPTY is a directory"]),
    "not a ckpt": ([f"ckpt_path={REPO / 'README.md'}"], ["not a PyTorch/Lightning checkpoint"]),
    "unsafe ckpt": (["ckpt_path=EVIL"], ["refused by weights-only loading"]),
    "garbage data.pkl": (["ckpt_path=GARBAGE"], ["ckpt_path=GARBAGE was refused by weights-only"]),
    "no mnist, no network": (
        ["data.data_dir=EMPTY"],
        ["EMPTY/MNIST/raw", "train-images-idx3-ubyte.gz"],
    ),
    "data_dir a file": (
        [f"data.data_dir={REPO / 'README.md'}"],
        [f"data.data_dir={REPO / 'README.md'} is a file"],
    ),
    "truncated idx": (["data.data_dir=TRUNCATED"], ["TRUNCATED"]),
    "idx of 32×32 images": (["data.data_dir=SHAPE"], ["SHAPE"]),
    "corrupt gz": (["data.data_dir=CORRUPT"], ["CORRUPT"]),
    "label 11": (["data.data_dir=LABEL11"], ["LABEL11"]),
    "a folder for a file": (["data.data_dir=FOLDER"], ["FOLDER"]),
}


def prepare(case: str, tmp_path) -> tuple[dict, list[str]]:
    """The places a case names, made; and the extra text its line must hold."""
    names = ("EMPTY", "EVIL", "GARBAGE", "TRUNCATED", "SHAPE", "CORRUPT", "LABEL11", "FOLDER")
    places = {name: tmp_path / name.lower() for name in names}
    places["EMPTY"].mkdir()
    write_evil_checkpoint(places["EVIL"])
    makers = {"truncated idx": (truncated_mnist, "TRUNCATED"),
              "idx of 32×32 images": (wrong_shape_mnist, "SHAPE"),
              "corrupt gz": (corrupt_gz_mnist, "CORRUPT"),
              "label 11": (label_11_mnist, "LABEL11"),
              "a folder for a file": (folder_for_a_file_mnist, "FOLDER"),
              "garbage data.pkl": (garbage_pickle_checkpoint, "GARBAGE")}  # fmt: skip
    if case in makers:
        make, place = makers[case]
        return places, [make(places[place])]
    return places, []


@pytest.mark.slow
@pytest.mark.parametrize("case", BAD_INPUT, ids=list(BAD_INPUT))
def test_bad_input_is_refused_with_one_message(case, base, tmp_path):
    overrides, expected = BAD_INPUT[case]
    places, extra = prepare(case, tmp_path)

    def fill(text):
        for name, path in places.items():
            text = text.replace(name, str(path))
        return text

    run_dir = tmp_path / "run"
    # A dead proxy stands in for a machine without network: torchvision's download fails at once.
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "http_proxy": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
    }
    cmd = [*PYTHON, "-m", "src.train", *base, *map(fill, overrides),
           f"hydra.run.dir={run_dir}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output  # 2 for ours; Hydra's own refusals (a typo) exit with 1
    for text in [*expected, *extra]:
        assert fill(text) in output, output
    assert "Traceback" not in output
    if any(override.startswith("trainer.") for override in overrides):  # the Trainer refused it
        assert "GPU available" not in output  # and its notes as it starts are not said
    assert not run_dir.exists(), sorted(p.name for p in run_dir.iterdir())  # a refusal leaves none
    assert not (tmp_path / "pwned").exists()


def crafted_run(tmp_path, target: dict):
    """Someone else's run folder: a real checkpoint whose config builds `target` as its network."""
    run_dir = tmp_path / "crafted"
    run_train("+experiment=nand", "data.steps_per_epoch=5", "trainer.max_steps=5",
              f"hydra.run.dir={run_dir}")  # fmt: skip
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint["config"]["model"]["net"] = target
    torch.save(checkpoint, ckpt)
    return ckpt


@pytest.mark.slow
@pytest.mark.parametrize("module", ["src.eval", "src.predict"])
def test_a_run_folder_cannot_run_code_of_its_own(module, tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    ckpt = crafted_run(tmp_path, {"_target_": "builtins.open", "file": str(victim), "mode": "w"})
    (tmp_path / "digits").mkdir()
    args = [f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'out'}"]
    if module == "src.predict":
        args = [f"ckpt_path={ckpt}", f"input={REPO / 'docs' / 'mnist_first_layer_weights.png'}"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([*PYTHON, "-m", module, *args], cwd=REPO, env=env,
                          capture_output=True, text=True)  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in output
    assert "model.net._target_=builtins.open is not one of the project's or PyTorch's classes" \
        in output and "allow=[builtins]" in output  # fmt: skip
    assert victim.read_text() == "keep me"


@pytest.mark.parametrize(("target", "defined"), [
    ("src.loggers.FileWriter", "torch.utils.tensorboard.writer.FileWriter"),
    ("torch.optim.lr_scheduler.partial", "functools.partial"),
])  # fmt: skip
def test_a_class_counts_where_it_is_defined_not_where_it_is_imported(target, defined):
    from src.checkpoints import check_target
    from src.errors import InputError

    with pytest.raises(InputError) as err:
        check_target(target, [], "model.net._target_")
    assert str(err.value).startswith(
        f"model.net._target_={target} is {defined}, defined outside the project and PyTorch"
    )
    check_target("torch.nn.Linear", [], "model.net._target_")  # torch.nn.modules.linear.Linear
    check_target("src.models.MLP", [], "model.net._target_")  # src.models.mlp.MLP


@pytest.mark.slow
def test_a_run_folder_may_build_only_classes_even_when_allowed(tmp_path):
    ckpt = crafted_run(tmp_path, {"_target_": "src.records.write_text", "path": "x", "text": "y"})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([*PYTHON, "-m", "src.eval", f"ckpt_path={ckpt}",
                           f"hydra.run.dir={tmp_path / 'out'}"], cwd=REPO, env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2
    assert "model.net._target_=src.records.write_text is not a class" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("module", ["src.eval", "src.predict"])
def test_eval_and_predict_without_a_checkpoint_say_so(module, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = ["input=x"] if module == "src.predict" else [f"hydra.run.dir={tmp_path}"]
    proc = subprocess.run([*PYTHON, "-m", module, *args], cwd=REPO, env=env,
                          capture_output=True, text=True)  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in output
    assert "ckpt_path is missing" in output


UNMAKEABLE = {  # a directory a run or sweep cannot have: (what names it, what the line says)
    "a file": ("FILE", "a file has that name"),
    "under a file": ("FILE/run", "Not a directory"),
    "a name too long": ("TMP/" + "a" * 300, "File name too long"),
    "on a read-only file system": ("READONLY/run", "Read-only file system"),
}


@pytest.mark.parametrize("mode", ["run", "sweep"])
@pytest.mark.parametrize("case", UNMAKEABLE, ids=list(UNMAKEABLE))
def test_a_directory_that_cannot_be_made_is_one_line(case, mode, tmp_path):
    place, said = (text.replace("FILE", str(tmp_path / "file")).replace("TMP", str(tmp_path))
                   for text in UNMAKEABLE[case])  # fmt: skip
    (tmp_path / "file").write_text("")
    key = f"hydra.{mode}.dir"
    args = ["-m", "src.train", *(["-m"] if mode == "sweep" else []), "+experiment=nand",
            "+debug=fdr", "seed=1,2" if mode == "sweep" else "seed=1"]  # fmt: skip
    args.append(f"{key}={place}")
    cmd = [*PYTHON, *args]
    if case == "on a read-only file system":  # a private mount, gone with the process
        if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
            pytest.skip("no unshare -rm (user and mount namespaces) here")
        readonly = tmp_path / "readonly"
        readonly.mkdir()
        # The real interpreter: a run forked from PYTHON's server would not be in the namespace.
        cmd = ["unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o ro tmpfs {readonly} && exec "$@"',
               "sh", sys.executable, *args]  # fmt: skip
        cmd = [part.replace("READONLY", str(readonly)) for part in cmd]
        place = place.replace("READONLY", str(readonly))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [
        f"error: {key}={place} cannot be made a directory ({said}): give another"
    ]


@pytest.mark.parametrize("entry", ["src.train", "src.eval", "src.predict"])
def test_a_number_too_long_to_read_is_one_line(entry, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [*PYTHON, "-m", entry, "+experiment=nand", "ckpt_path=last.ckpt",
           "seed=" + "1" * 5000, f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [
        "error: seed: Exceeds the limit (4300 digits) for integer string conversion: "
        "value has 5000 digits"
    ]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_loses_nothing(tiny_mnist, tmp_path):
    """Files capped at 200 KB, as a nearly full disk caps them: the first checkpoint (400 KB)
    cannot be written. The run says so in one line; no half-written file is left behind."""

    def cap_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the cap fails, not the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [*PYTHON, "-m", "src.train", "+experiment=mnist_sgd", f"data.data_dir={tiny_mnist}",
         "data.val_size=100", "trainer.max_epochs=2", f"hydra.run.dir={run_dir}"],
        cwd=REPO, env=env, capture_output=True, text=True, preexec_fn=cap_files, timeout=300,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in output
    ckpt = run_dir / "checkpoints" / "best-epoch01.ckpt"
    assert f"no room to write {ckpt} (File too large): free some space, then run it again" in output
    assert not (run_dir / "metrics.json").exists()
    assert not [p for p in run_dir.rglob("*") if p.is_file() and p.stat().st_size == 0]
    assert not list(run_dir.rglob("*.partial")) and not list(run_dir.rglob("*.ckpt"))


@pytest.mark.slow
def test_a_full_disk_under_tensorboard_names_its_event_file(tmp_path):
    """TensorBoard's writer thread reports a failed write without a file name: the line still
    names the file, the run's own event file, not just the run folder."""

    def cap_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000))  # the gates' pictures: 120 KB

    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [*PYTHON, "-m", "src.train", "+experiment=nand", "data.steps_per_epoch=250",
         "trainer.max_steps=1000", f"hydra.run.dir={run_dir}"],
        cwd=REPO, env=env, capture_output=True, text=True, preexec_fn=cap_files, timeout=300,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in output
    (events,) = run_dir.glob("events.out.tfevents.*")
    assert events.stat().st_size == 30_000
    assert f"no room to write {events} (File too large): free some space, then" in output
    assert not (run_dir / "metrics.json").exists()


@pytest.mark.slow
def test_eval_refuses_a_checkpoint_outside_its_run(tmp_path):
    ckpt = tmp_path / "x.ckpt"
    torch.save({"state_dict": {}}, ckpt)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [*PYTHON, "-m", "src.eval", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'e'}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert ".hydra/config.yaml not found" in proc.stdout + proc.stderr
    assert not (tmp_path / "e" / "metrics.json").exists()


@pytest.mark.slow
def test_checkpoints_hold_no_pickled_objects(tmp_path):
    """Every checkpoint a run writes loads with weights_only=True, so resuming never needs more."""
    run_train("+experiment=nand", "trainer.max_steps=200", f"hydra.run.dir={tmp_path}")
    for ckpt in (tmp_path / "checkpoints").glob("*.ckpt"):
        torch.load(ckpt, weights_only=True)
    with pytest.raises(pickle.UnpicklingError):
        write_evil_checkpoint(tmp_path / "evil.ckpt")
        torch.load(tmp_path / "evil.ckpt", weights_only=True)
    assert not (tmp_path / "pwned").exists()


# A run folder's config is data. Each case: what it does to a real run's config, and the key the
# one line names. SECRET stands for what this machine's environment holds.
SECRET = ("RUN_FOLDER_SECRET", "s3cret-value")


def net(config: dict) -> dict:
    return config["model"]["net"]


HOSTILE = {
    "environment": (lambda c: net(c).update(hidden_dim=f"${{oc.env:{SECRET[0]}}}"),
                    "model.net.hidden_dim=${oc.env:RUN_FOLDER_SECRET} calls the resolver oc.env"),
    "environment by reference": (
        lambda c: (c["data"].update(gate="${paths.gate}"),
                   c["paths"].update(gate=f"${{oc.env:{SECRET[0]}}}")),
        "paths.gate=${oc.env:RUN_FOLDER_SECRET} calls the resolver oc.env",
    ),
    "unknown resolver": (lambda c: net(c).update(hidden_dim="${nope:x}"),
                         "model.net.hidden_dim=${nope:x} calls the resolver nope"),
    "dangling reference": (lambda c: net(c).update(hidden_dim="${nowhere.x}"),
                           "model.net.hidden_dim=${nowhere.x} refers to nowhere.x"),
    "reference loop": (
        lambda c: (net(c).update(hidden_dim="${paths.a}"), c["paths"].update(a="${paths.b}"),
                   c["paths"].update(b="${paths.a}")),
        "model.net.hidden_dim cannot be resolved",
    ),
    "never set": (lambda c: net(c).update(hidden_dim="???"), "model.net.hidden_dim is ???"),
    "torch's Module": (lambda c: net(c).update(_target_="torch.nn.modules.module.Module"),
                       "model.net cannot be built (TypeError: Module.__init__() got an"),
    "unknown argument": (lambda c: net(c).update(width=3),
                         "model.net.width is not an argument of src.models.LogicGateNet"),
    "missing argument": (lambda c: net(c).pop("hidden_dim"),
                         "model.net has no hidden_dim, which src.models.LogicGateNet needs"),
    "wrong type": (lambda c: net(c).update(hidden_dim="abc"),
                   "model.net.hidden_dim='abc' is not of type int"),
    "negative size": (lambda c: net(c).update(hidden_dim=-5),
                      "model.net cannot be built (ValueError: hidden_dim=-5 is out of range"),
    "a tensor for a value": (lambda c: net(c).update(hidden_dim=torch.tensor([3])),
                             "model.net.hidden_dim holds a Tensor, not a plain value"),
    "not a mapping": (lambda checkpoint: checkpoint.update(config=["model", "data"]),
                      "its top is a list, not a mapping of settings"),
    # A setting a resume uses: a new learning rate scales the restored ones by now / then.
    "lr from the environment": (lambda c: c["optimizer"].update(lr=f"${{oc.env:{SECRET[0]}}}"),
                                "optimizer.lr='${oc.env:RUN_FOLDER_SECRET}' is not"),
}  # fmt: skip
DIGIT_IMAGE = REPO / "docs" / "mnist_first_layer_weights.png"


@pytest.fixture(scope="module")
def gate_run(tmp_path_factory):
    """A real run's folder: a few steps of nand."""
    run_dir = tmp_path_factory.mktemp("gates") / "run"
    run_train("+experiment=nand", "data.steps_per_epoch=5", "trainer.max_steps=5",
              f"hydra.run.dir={run_dir}")  # fmt: skip
    return run_dir


def hostile_run(gate_run, tmp_path, case: str, where: str = "checkpoint"):
    """A copy of `gate_run`'s checkpoint (and .hydra/config.yaml) with the case's config: kept in
    the checkpoint, or (`where="yaml"`) in .hydra/config.yaml of a checkpoint that keeps none.
    Returns the checkpoint and the file the config is read from."""
    checkpoint = torch.load(gate_run / "checkpoints" / "last.ckpt", weights_only=True)
    config = checkpoint["config"]
    edit, _ = HOSTILE[case]
    edit(checkpoint if case == "not a mapping" else config)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / ".hydra").mkdir()
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    yaml_file = tmp_path / "run" / ".hydra" / "config.yaml"
    yaml_file.write_text((gate_run / ".hydra" / "config.yaml").read_text())
    if where == "yaml":
        yaml_file.write_text(yaml.safe_dump(checkpoint.pop("config"), sort_keys=False))
    torch.save(checkpoint, ckpt)
    return ckpt, (f"the config in ckpt_path={ckpt}" if where == "checkpoint" else str(yaml_file))


def files_under(path) -> set:
    return {p.relative_to(path) for p in path.rglob("*")}


def entry_point(entry: str, ckpt, out_dir):
    """src.eval's or src.predict's work for `ckpt`, in this process."""
    from hydra import compose, initialize_config_dir

    from src.config import register
    from src.eval import evaluate
    from src.predict import predict

    if entry == "predict":
        return predict(ckpt, DIGIT_IMAGE)
    register()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("eval", [f"ckpt_path={ckpt}", f"paths.output_dir={out_dir}"])
    return evaluate(cfg, out_dir)


# What src.eval and src.predict build: all but the optimizer's learning rate.
FOLDER_CASES = [(case, "checkpoint") for case in HOSTILE if case != "lr from the environment"] + [
    (case, "yaml") for case in ("environment", "dangling reference", "missing argument")
]


@pytest.mark.slow
@pytest.mark.parametrize("entry", ["eval", "predict"])
@pytest.mark.parametrize(("case", "where"), FOLDER_CASES, ids=[f"{c}-{w}" for c, w in FOLDER_CASES])
def test_a_run_folder_whose_config_cannot_be_built_is_refused_in_one_line(
    entry, case, where, gate_run, tmp_path, monkeypatch
):
    from src.errors import InputError

    monkeypatch.setenv(*SECRET)
    ckpt, source = hostile_run(gate_run, tmp_path, case, where)
    (tmp_path / "out").mkdir()
    before = files_under(tmp_path)
    with pytest.raises(InputError) as err:
        entry_point(entry, ckpt, tmp_path / "out")
    said = str(err.value)
    assert "\n" not in said and said.startswith(f"{source}: "), said
    assert HOSTILE[case][1] in said and "train again, or use another run" in said, said
    assert SECRET[1] not in said
    assert files_under(tmp_path) == before  # nothing written: no metrics.json, no event file


RESUME = ("+experiment=nand", "data.steps_per_epoch=5", "trainer.max_steps=10")


@pytest.mark.slow
@pytest.mark.parametrize(("module", "case", "said"), [
    ("src.eval", "environment", "calls the resolver oc.env"),
    ("src.predict", "torch's Module", "model.net cannot be built"),
    ("src.train", "lr from the environment", "optimizer.lr='${oc.env:RUN_FOLDER_SECRET}' is not"),
    ("src.train", "not a mapping", "its top is a list, not a mapping of settings"),
])  # fmt: skip
def test_the_commands_refuse_such_a_folder_in_one_line_with_status_2(
    module, case, said, gate_run, tmp_path
):
    """The same answer from every command that reads a run folder's config: src.eval and
    src.predict build from it, a resume (src.train ckpt_path=) compares its settings with it."""
    ckpt, _ = hostile_run(gate_run, tmp_path, case)
    out = tmp_path / "out"
    args = {"src.eval": [f"ckpt_path={ckpt}", f"hydra.run.dir={out}"],
            "src.predict": [f"ckpt_path={ckpt}", f"input={DIGIT_IMAGE}"],
            "src.train": [*RESUME, f"ckpt_path={ckpt}", f"hydra.run.dir={out}"]}  # fmt: skip
    before = files_under(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO), SECRET[0]: SECRET[1]}
    proc = subprocess.run([*PYTHON, "-m", module, *args[module]], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    output = proc.stdout + proc.stderr
    lines = [line for line in output.splitlines() if line.strip()]
    assert proc.returncode == 2, output
    assert len(lines) == 1 and "Traceback" not in output, output
    assert str(ckpt) in lines[0] and said in lines[0] and SECRET[1] not in output, output
    # Hydra's own record of the command is all it leaves: no metrics.json, checkpoint or events.
    new = files_under(tmp_path) - before
    hydras = {p for p in new if p == Path("out") or p.parts[:2] == ("out", ".hydra")
              or (p.parent == Path("out") and p.suffix == ".log")}  # fmt: skip
    assert new == hydras, new - hydras


@pytest.mark.parametrize("overrides", ["[1, 2]", "{a: b}", "[unclosed", "\x00\xff"])
def test_a_report_of_a_run_whose_overrides_file_is_not_a_list_leaves_the_command_out(
    overrides, tmp_path
):
    from src.report import run_report

    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_bytes(overrides.encode("latin-1"))
    (tmp_path / "metrics.json").write_text('{"status": "completed"}')
    text = run_report(tmp_path).read_text()
    assert "python -m src.train" not in text and "| status | completed |" in text
