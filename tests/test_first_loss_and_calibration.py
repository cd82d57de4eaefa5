"""Two of the primer's lessons in every classification run: the loss before the first optimizer
step, said against ln C (a uniform guess over C classes), and the test set's calibration
(`test/ece` and a reliability diagram)."""

import logging
import math
from functools import partial

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torchmetrics.functional.classification import multiclass_calibration_error

from src.callbacks.digit_pictures import CALIBRATION_BINS, calibration_counts, calibration_error
from src.checkpoints import load_run
from src.config import register
from src.data import MNISTDataModule
from src.eval import evaluate
from src.models import DigitClassifier
from src.modules import DigitModule
from src.report import run_report
from tests.conftest import REPO, read_metrics, run_train

LN10 = math.log(10)


SHARED_RUNS = ("digit_run",)  # runs several tests read: each made once (conftest.py)


@pytest.fixture(scope="module")
def digit_run(tiny_mnist, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("digits")
    proc = run_train(
        "+experiment=mnist_sgd", f"data.data_dir={tiny_mnist}", "data.val_size=100",
        "trainer.max_epochs=1", f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    return run_dir, proc


def load_events(run_dir) -> EventAccumulator:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


@pytest.mark.slow
def test_the_first_loss_is_said_logged_and_recorded(digit_run):
    run_dir, proc = digit_run
    first = read_metrics(run_dir)["first_loss"]
    assert abs(first - LN10) < 0.3  # an untrained DigitClassifier guesses about uniformly
    (scalar,) = load_events(run_dir).Scalars("train/first_loss")
    assert (scalar.step, scalar.value) == (0, pytest.approx(first))
    said = f"first loss {first:.2f} (a uniform guess over 10 classes gives ln 10 = 2.30): "
    assert proc.stdout.count("first loss ") == 1 and f"[INFO] - {said}as expected" in proc.stdout


@pytest.mark.slow
def test_test_ece_is_torchmetrics_on_the_tested_checkpoint_and_eval_gives_it_again(
    digit_run, tmp_path
):
    run_dir, _ = digit_run
    metrics = read_metrics(run_dir)
    assert 0 < metrics["test/ece"] < 1
    module, data, _ = load_run(run_dir / metrics["tested"])
    data.setup("test")
    x, y = data.test_set.tensors
    with torch.no_grad():
        probs = module(x).softmax(dim=1)
    # torchmetrics' defaults: 15 bins, l1 norm.
    assert metrics["test/ece"] == pytest.approx(
        multiclass_calibration_error(probs, y, num_classes=10).item(), abs=1e-6
    )
    register()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        overrides = [f"ckpt_path={run_dir / metrics['tested']}", f"paths.output_dir={tmp_path}",
                     "trainer.accelerator=cpu"]  # fmt: skip
        cfg = compose("eval", overrides)
    evaluated = evaluate(cfg, tmp_path)
    assert evaluated["test/ece"] == metrics["test/ece"]


@pytest.mark.slow
def test_the_reliability_diagram_is_a_card_and_in_the_report(digit_run):
    run_dir, _ = digit_run
    (image,) = load_events(run_dir).Images("pictures/reliability")
    assert (image.step, image.width) == (read_metrics(run_dir)["steps"], 350)
    name = f"pictures_reliability_step{image.step}.png"
    assert f"![pictures/reliability]({name})" in run_report(run_dir).read_text()
    assert (run_dir / name).read_bytes() == image.encoded_image_string


def test_the_diagrams_bins_are_those_of_test_ece():
    """Counted per bin, summed over batches, the diagram's ECE is torchmetrics' own, with the
    confidences that fall on a bin's edge or are exactly 1."""
    generator = torch.Generator().manual_seed(0)
    edges = torch.linspace(0, 1, CALIBRATION_BINS + 1)[2:]  # every edge a confidence can reach
    confidence = torch.cat([edges, torch.rand(1000, generator=generator) * 0.9 + 0.1])
    # Rows of probabilities whose largest is `confidence`, at a random class.
    probs = ((1 - confidence) / 9).unsqueeze(1).repeat(1, 10)
    pred = torch.randint(10, (len(confidence),), generator=generator)
    probs[torch.arange(len(confidence)), pred] = confidence
    y = torch.where(torch.rand(len(confidence), generator=generator) < confidence, pred,
                    (pred + 1) % 10)  # fmt: skip
    batches = zip(confidence.split(300), pred.split(300), y.split(300), strict=True)
    counts = sum(calibration_counts(c, p == t) for c, p, t in batches)  # as the test set's batches
    assert counts[0].sum() == len(confidence) and counts[0, -1] == 1  # 1.0 has a bin of its own
    assert calibration_error(counts) == pytest.approx(
        multiclass_calibration_error(probs, y, num_classes=10).item(), abs=1e-6
    )


def fit(data_dir, net=None, module=None, **flags) -> L.LightningModule:
    """A real Trainer's fit of a DigitModule on the tiny files; 16 steps an epoch."""
    L.seed_everything(0)
    data = MNISTDataModule(
        data_dir=str(data_dir), dataset="mnist", batch_size=32, eval_batch_size=100, val_size=100,
        train_size=None, split_seed=0, normalize=False, download=False, seed=0,
    )  # fmt: skip
    if module is None:
        module = DigitModule(net=net, optimizer=partial(torch.optim.SGD, lr=0.5, momentum=0.5))
    trainer = L.Trainer(
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", devices=1, **flags,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    return module


class Unchecked(DigitModule):
    """The digit task as a task without classes: its first loss is kept, not checked."""

    num_classes = None


def first_loss_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("first loss ")]


def test_the_check_changes_nothing(tiny_mnist, caplog):
    """With the check or without it: the same weights, bit for bit; the first loss is the
    untrained net's loss on the epoch's first minibatch."""
    runs = {}
    with caplog.at_level(logging.INFO, logger="src.modules.supervised"):
        for name, module in (("checked", DigitModule), ("unchecked", Unchecked)):
            L.seed_everything(0)
            net = DigitClassifier(hidden_dim=16, activation="relu")
            start = {k: v.clone() for k, v in net.state_dict().items()}
            module = module(net=net, optimizer=partial(torch.optim.SGD, lr=0.5, momentum=0.5))
            runs[name] = fit(tiny_mnist, module=module, max_epochs=2)
    checked, unchecked = runs.values()
    for name, value in checked.net.state_dict().items():
        assert torch.equal(unchecked.net.state_dict()[name], value), name
    # Kept by both (divergence is judged by it), said and checked against ln 10 by one.
    assert unchecked.first_loss == checked.first_loss and len(first_loss_lines(caplog)) == 1
    # The first minibatch of epoch 0, through the net as it started.
    data = MNISTDataModule(
        data_dir=str(tiny_mnist), dataset="mnist", batch_size=32, eval_batch_size=100,
        val_size=100, train_size=None, split_seed=0, normalize=False, download=False, seed=0,
    )  # fmt: skip
    data.setup()
    loader = data.train_dataloader()
    x, y = loader.dataset[loader.sampler.order()[:32]]
    net = DigitClassifier(hidden_dim=16, activation="relu")
    net.load_state_dict(start)
    with torch.no_grad():
        assert checked.first_loss == pytest.approx(
            torch.nn.functional.cross_entropy(net(x), y).item(), abs=1e-6
        )


def test_a_net_sure_of_itself_before_training_is_warned_about(tiny_mnist, caplog):
    """Output weights 50 times their initial size: the first loss is far above ln 10. The same
    net trained, then fitted again: far below it. Each says what may cause it."""
    L.seed_everything(0)
    net = DigitClassifier(hidden_dim=128, activation="relu")
    with torch.no_grad():
        net.out.weight.mul_(50)
    # A gentler rate than fit's: from a start this far off, lr 0.5 blows the loss up to 15 times
    # its first value, which stops the run as diverged.
    module = DigitModule(net=net, optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.5))
    with caplog.at_level(logging.INFO, logger="src.modules.supervised"):
        module = fit(tiny_mnist, module=module, max_epochs=3)
        (above,) = first_loss_lines(caplog)
        caplog.clear()
        fit(tiny_mnist, module=module, max_steps=1)  # a new fit from trained weights
        (below,) = first_loss_lines(caplog)
    assert above.levelno == below.levelno == logging.WARNING
    assert above.getMessage().startswith("first loss 5.37 (a uniform guess over 10 classes ")
    assert "far above it" in above.getMessage()
    for cause in ("initial weights or logits too large", "inputs not scaled"):
        assert cause in above.getMessage()
    assert module.first_loss < LN10 - 0.5 and "far below it" in below.getMessage()
    for cause in ("not freshly initialized", "labels that leak into the inputs"):
        assert cause in below.getMessage()
