"""Pictures in TensorBoard (read back by its reader and its HTTP server), reports, and predict."""

import json
import os
import re
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter
from torchvision import datasets

from src.callbacks.digit_pictures import HIST_BINS, histogram
from tests.conftest import PYTHON, REPO, read_metrics, run_train


def load_events(run_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0, "histograms": 0})
    events.Reload()
    return events


def run_module(module: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [*PYTHON, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert not check or proc.returncode == 0, proc.stdout + proc.stderr
    return proc


SHARED_RUNS = ("digit_run",)  # runs several tests read: each made once (conftest.py)


@pytest.fixture(scope="module")
def digit_run(tiny_mnist, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("digits")
    run_train(
        "+experiment=mnist_sgd", f"data.data_dir={tiny_mnist}", "data.val_size=100",
        "trainer.max_epochs=2", f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    return run_dir


@pytest.fixture(scope="module")
def gate_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("xor")
    run_train("+experiment=xor", "trainer.max_steps=2000", f"hydra.run.dir={run_dir}")
    return run_dir


@pytest.mark.slow
def test_digit_pictures_have_the_right_sizes(digit_run):
    events = load_events(digit_run)
    weights = events.Images("pictures/first_layer_weights")
    assert [image.step for image in weights] == [8, 16]  # once per epoch
    # Drawn for TensorBoard's 350-pixel cards: the first 36 of 128 units as 56×56 tiles (28×28
    # doubled), 6 per row, 2-pixel borders.
    assert (weights[-1].width, weights[-1].height) == (6 * 58 + 2, 6 * 58 + 2)
    (matrix,) = events.Images("pictures/confusion_matrix")
    (mistakes,) = events.Images("pictures/confident_mistakes")
    assert (matrix.width, matrix.height) == (350, 350)
    assert mistakes.width == 350 and mistakes.height >= 100
    for layer in ("first_layer", "output_layer"):
        for kind in ("weight", "bias"):
            # As initialized, then after each epoch: a distribution over time from one epoch on.
            assert [h.step for h in events.Histograms(f"{layer}/{kind}")] == [0, 8, 16]
            assert [h.step for h in events.Histograms(f"{layer}/{kind}_gradient")] == [8, 16]
    assert len(events.Scalars("train/lr")) == 2
    assert events.Scalars("train/lr")[-1].value == pytest.approx(0.01)


@pytest.mark.parametrize("values", [torch.randn(784 * 128) * 0.03, torch.full((10,), 0.25)])
def test_histograms_agree_with_tensorboards_own(values, tmp_path):
    """Counted by torch, read back by TensorBoard: the same as SummaryWriter.add_histogram."""
    writer = SummaryWriter(tmp_path)
    writer.add_histogram_raw("ours", global_step=3, **histogram(values))  # as DigitPictures does
    writer.add_histogram("theirs", values, 3, bins=HIST_BINS)
    writer.close()
    events = load_events(tmp_path)
    (ours,), (theirs,) = events.Histograms("ours"), events.Histograms("theirs")
    ours, theirs = ours.histogram_value, theirs.histogram_value
    assert (ours.min, ours.max, ours.num) == (theirs.min, theirs.max, theirs.num)
    assert ours.sum == pytest.approx(theirs.sum) and ours.sum_squares == pytest.approx(
        theirs.sum_squares
    )
    # numpy's drops the empty buckets at both ends; the counts in the rest are the same.
    counts = [c for c in ours.bucket if c]
    assert counts == [c for c in theirs.bucket if c] and sum(counts) == len(values)


@pytest.mark.slow
def test_histograms_can_be_turned_off(tiny_mnist, tmp_path):
    run_train(
        "+experiment=mnist_sgd", f"data.data_dir={tiny_mnist}", "data.val_size=100",
        "trainer.max_epochs=1", "callbacks.digit_pictures.histograms=false",
        f"hydra.run.dir={tmp_path}",
    )  # fmt: skip
    events = load_events(tmp_path)
    assert events.Tags()["histograms"] == []
    assert len(events.Images("pictures/first_layer_weights")) == 1


@pytest.mark.slow
def test_gate_pictures_show_training_moments_and_hidden_activations(gate_run):
    events = load_events(gate_run)
    surfaces = events.Images("pictures/output_surface")
    assert [image.step for image in surfaces] == [0, 1000, 2000]  # the start, each epoch's end
    assert all(image.width > 300 and image.height > 300 for image in surfaces)
    (hidden,) = events.Images("pictures/hidden_activations")
    assert hidden.step == 2000 and hidden.width > 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.mark.slow
def test_tensorboard_server_serves_the_runs_scalars_and_images(digit_run):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(digit_run),
         "--host", "127.0.0.1", "--port", str(port), "--load_fast=false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/data"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                scalar_tags = json.loads(get(f"{base}/plugin/scalars/tags"))
                if "test/acc" in scalar_tags.get(".", {}):  # written last: everything is loaded
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "TensorBoard did not come up"
            time.sleep(0.5)
        assert {"val/acc", "train/loss", "train/lr"} <= set(scalar_tags["."])
        points = json.loads(get(f"{base}/plugin/scalars/scalars?run=.&tag=val/acc"))
        assert len(points) == 2  # [wall_time, step, value] per epoch
        assert points[-1][2] == pytest.approx(read_metrics(digit_run)["val/acc"])
        image_tags = json.loads(get(f"{base}/plugin/images/tags"))["."]
        assert {"pictures/first_layer_weights", "pictures/confusion_matrix"} <= set(image_tags)
        listing = json.loads(
            get(f"{base}/plugin/images/images?run=.&tag=pictures/first_layer_weights")
        )
        assert [entry["step"] for entry in listing] == [8, 16]
        image = get(f"{base}/plugin/images/individualImage?{listing[-1]['query']}")
        assert png_size(image) == (350, 350)
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_report_for_a_run(digit_run):
    proc = run_module("src.report", str(digit_run))
    report = digit_run / "report.md"
    assert f"wrote {report}" in proc.stdout
    text = report.read_text()
    assert "| test/acc |" in text and "python -m src.train +experiment=mnist_sgd" in text
    # Values as a person reads them: 4 significant digits, no Python reprs.
    values = dict(re.findall(r"^\| (\S+) \| (.*) \|$", text, flags=re.M))
    assert values["test/acc"] == f"{read_metrics(digit_run)['test/acc']:.4g}"
    assert values["monitor"] == "metric: val/acc, mode: max"
    assert not any(c in value for value in values.values() for c in "{}[]'")
    assert all(
        len(re.sub(r"\D", "", v)) <= 6 for v in values.values() if re.fullmatch(r"[\d.e+-]+", v)
    )
    pictures = re.findall(r"\]\(([^)]+\.png)\)", text)
    assert "curves.png" in pictures
    assert any(p.startswith("pictures_first_layer_weights") for p in pictures)
    assert any(p.startswith("pictures_confusion_matrix") for p in pictures)
    for picture in pictures:
        png_size((digit_run / picture).read_bytes())


@pytest.mark.slow
def test_report_for_a_sweep(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(
        [*PYTHON, "-m", "src.train", "-m", "+experiment=nand", "data.steps_per_epoch=100",
         "trainer.max_steps=300",
         "optimizer.lr=0.5,2.0", f"hydra.sweep.dir={tmp_path}"],
        cwd=REPO, env=env, check=True, capture_output=True,
    )  # fmt: skip
    run_module("src.report", str(tmp_path))
    text = (tmp_path / "report.md").read_text()
    assert "optimizer.lr=0.5" in text and "optimizer.lr=2.0" in text
    for picture in ("summary.png", "train_loss.png"):
        assert f"]({picture})" in text
        png_size((tmp_path / picture).read_bytes())


def write_digit_pngs(folder: Path, images: np.ndarray) -> list[Path]:
    """Each MNIST image twice, enlarged: white-on-black and black-on-white, in RGB."""
    folder.mkdir()
    files = []
    for i, image in enumerate(images):
        big = Image.fromarray(image).resize((84, 96))
        for name, picture in (("dark", big), ("light", Image.fromarray(255 - np.asarray(big)))):
            files.append(folder / f"{i:02d}_{name}.png")
            picture.convert("RGB").save(files[-1])
    return files


LINE = re.compile(r"^(?P<file>.+\.png) prediction: (?P<digit>\d) \(p=(?P<p>[01]\.\d{3})\)$")


def predictions(proc) -> dict[str, int]:
    found = {}
    for line in proc.stdout.splitlines():
        match = LINE.match(line)
        if match:
            assert 0.1 <= float(match["p"]) <= 1  # a softmax maximum over 10 classes
            found[Path(match["file"]).name] = int(match["digit"])
    return found


@pytest.mark.slow
def test_predict_prints_one_line_per_png(digit_run, tiny_mnist, tmp_path):
    images = datasets.MNIST(str(tiny_mnist), train=False).data[:3].numpy()
    files = write_digit_pngs(tmp_path / "digits", images)
    ckpt = digit_run / "checkpoints" / "last.ckpt"
    proc = run_module("src.predict", f"ckpt_path={ckpt}", f"input={tmp_path / 'digits'}")
    found = predictions(proc)
    assert sorted(found) == sorted(f.name for f in files)
    one = run_module("src.predict", f"ckpt_path={ckpt}", f"input={files[0]}")
    assert predictions(one) == {files[0].name: found[files[0].name]}
    missing = run_module("src.predict", f"ckpt_path={ckpt}", "input=/no/such.png", check=False)
    assert missing.returncode == 2 and "input=/no/such.png does not exist" in missing.stdout


@pytest.mark.slow
def test_predict_reads_real_digits_on_either_background(real_mnist, tmp_path):
    run_dir = tmp_path / "run"
    run_train(
        "+experiment=mnist_adam", f"data.data_dir={real_mnist}", "trainer.max_epochs=1",
        f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    test = datasets.MNIST(str(real_mnist), train=False)
    write_digit_pngs(tmp_path / "digits", test.data[:20].numpy())
    proc = run_module(
        "src.predict", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        f"input={tmp_path / 'digits'}",
    )  # fmt: skip
    found = predictions(proc)
    assert len(found) == 40
    correct = sum(found[f"{i:02d}_{bg}.png"] == test.targets[i] for i in range(20) for bg in
                  ("dark", "light"))  # fmt: skip
    assert correct >= 36  # ~94 % after one epoch; light paper must not change the answer
