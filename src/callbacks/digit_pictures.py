"""Pictures of what a digit classifier learned, written to TensorBoard's IMAGES and HISTOGRAMS
tabs."""

import contextlib

import lightning as L
import torch
from matplotlib.figure import Figure
from torch.nn.functional import pad
from torchmetrics.classification import MulticlassConfusionMatrix

from src.loggers import tensorboard_writer

HIST_BINS = 64
# TensorBoard's IMAGES cards are about 350 pixels wide and shrink anything wider: each picture is
# drawn at that width, with text no smaller than 8 points, so it reads without zooming.
CARD_INCHES = 3.5  # at matplotlib's 100 dpi
PATTERNS, PATTERN_COLS, PATTERN_PIXELS = 36, 6, 56  # the first 36 units, each shown 56 px wide
CALIBRATION_BINS = 15  # torchmetrics' default, as test/ece is measured


def histogram(values: torch.Tensor) -> dict:
    """A histogram of `values` in HIST_BINS even bins, counted by torch: the arguments of
    SummaryWriter.add_histogram_raw.

    SummaryWriter.add_histogram counts with numpy, whose BLAS threads then spin for a while on
    the cores that training needs (a tenth of the epoch's time on two cores); its default
    log-spaced bins also cost four times as much to count.
    """
    values = values.detach().flatten().double().cpu()
    low, high = (v.item() for v in values.aminmax())
    # A single value gets bins around it, as numpy gives it.
    start, end = (low, high) if low < high else (low - 0.5, high + 0.5)
    counts = torch.histc(values, bins=HIST_BINS, min=start, max=end)
    limits = torch.linspace(start, end, HIST_BINS + 1)
    # TensorBoard reads each bucket's right edge; the empty first one carries the left edge.
    return {
        "min": low,
        "max": high,
        "num": values.numel(),
        "sum": values.sum().item(),
        "sum_squares": values.square().sum().item(),
        "bucket_limits": limits.tolist(),
        "bucket_counts": [0, *counts.tolist()],
    }


ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth")


def layer_names(net: torch.nn.Module) -> dict[str, str]:
    """Each parameter's name as a person would say it: `hidden.weight` → `first_layer/weight`,
    the last layer's → `output_layer/...` (layers counted in the order the net defines them)."""
    layers = [name for name, module in net.named_modules() if list(module.parameters(False))]
    said = {
        layer: "output_layer" if k == len(layers) - 1 else
        f"{ORDINALS[k]}_layer" if k < len(ORDINALS) else f"layer_{k + 1}"
        for k, layer in enumerate(layers)
    }  # fmt: skip
    names = {}
    for name, _ in net.named_parameters():
        layer, _, kind = name.rpartition(".")
        names[name] = f"{said[layer]}/{kind}"
    return names


def first_layer_patterns(net: torch.nn.Module) -> torch.Tensor | None:
    """What the network's first layer looks for in an image, as (N, h, w) pictures: a dense
    layer's weights per unit over the 28×28 pixels, or a convolution's filters; None otherwise."""
    for module in net.modules():
        if isinstance(module, torch.nn.Linear) and module.in_features == 28 * 28:
            return module.weight.detach().cpu().view(-1, 28, 28)
        if isinstance(module, torch.nn.Conv2d) and module.in_channels == 1:
            return module.weight.detach().cpu()[:, 0]
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            return None  # the first layer sees something other than the image itself
    return None


class DigitPictures(L.Callback):
    """MNIST runs: the first layer's weights (or filters) as images and weight/gradient histograms
    each epoch; after testing, the confusion matrix, the most confidently misclassified digits and
    the reliability diagram (accuracy per confidence bin).

    Each hidden unit's weights are the pattern it measures the input's similarity to. The epoch
    pictures are taken as training goes (a gray grid and bucket counts: a few milliseconds) but
    written when fit ends: TensorBoard's writer checksums every byte in Python, on a thread that
    would hold up training for longer than the epoch's validation takes.
    """

    def __init__(self, histograms: bool, mistakes: int = 12):
        self.histograms = histograms
        self.mistakes = mistakes
        self.images: list[tuple[int, torch.Tensor]] = []  # (step, grid)
        self.counts: list[tuple[str, int, dict]] = []  # (tag, step, histogram)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The weights as initialized: with the first epoch's, a distribution over time even for
        # a one-epoch run.
        if self.histograms and tensorboard_writer(trainer) is not None and trainer.is_global_zero:
            self.take_histograms(pl_module, trainer.global_step)

    def take_histograms(self, pl_module: L.LightningModule, step: int, grads: bool = False):
        """The weights (or their gradients) of each layer, counted now, written at fit end."""
        names = layer_names(pl_module.net)
        for name, param in pl_module.net.named_parameters():
            values = param.grad if grads else param
            # A diverged run's NaNs have no histogram; the module stops the run and says so.
            if values is not None and values.isfinite().all():
                tag = names[name] + ("_gradient" if grads else "")
                self.counts.append((tag, step, histogram(values)))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if tensorboard_writer(trainer) is None or not trainer.is_global_zero:
            return
        step = trainer.global_step
        patterns = first_layer_patterns(pl_module.net)
        if patterns is not None and patterns.isfinite().all():
            self.images.append((step, pattern_grid(patterns)))
        if self.histograms:
            self.take_histograms(pl_module, step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # The gradients of the epoch's last optimizer step: zeroed before validation.
        if not (self.histograms and trainer.is_last_batch and trainer.is_global_zero):
            return
        if tensorboard_writer(trainer) is not None:
            self.take_histograms(pl_module, trainer.global_step, grads=True)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.write(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception) -> None:
        # What was taken before the run stopped, unless writing is what failed (a full disk).
        if not isinstance(exception, OSError):
            with contextlib.suppress(OSError):
                self.write(trainer)

    def write(self, trainer: L.Trainer) -> None:
        writer = tensorboard_writer(trainer)
        if writer is not None:
            for step, grid in self.images:
                writer.add_image("pictures/first_layer_weights", grid, step, dataformats="HW")
            for tag, step, counts in self.counts:
                writer.add_histogram_raw(tag, global_step=step, **counts)
        self.images, self.counts = [], []

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.confusion = MulticlassConfusionMatrix(num_classes=10).to(pl_module.device)
        self.wrong: list[tuple[torch.Tensor, ...]] = []
        self.calibration = torch.zeros(3, CALIBRATION_BINS + 1, dtype=torch.float64)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        with torch.no_grad():
            probs = pl_module(x).softmax(dim=1)
        confidence, pred = probs.max(dim=1)
        self.confusion.update(pred, y)
        wrong = pred != y
        self.wrong.append(tuple(t[wrong].cpu() for t in (x, y, pred, confidence)))
        self.calibration += calibration_counts(confidence, pred == y)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Every rank takes part in summing the confusion matrix under DDP; rank 0 draws it
        # (and the mistakes from its own share of the test set).
        matrix = self.confusion.compute().cpu()
        calibration = self.calibration
        if trainer.world_size > 1:  # kept on the CPU (MPS has no float64), summed on the device
            calibration = trainer.strategy.reduce(calibration.to(pl_module.device), reduce_op="sum")
        writer = tensorboard_writer(trainer)
        if writer is None or not trainer.is_global_zero:
            return
        step = trainer.global_step
        fig = Figure(figsize=(CARD_INCHES, CARD_INCHES))
        ax = fig.add_axes((0.1, 0.1, 0.88, 0.82))
        ax.imshow(matrix.log1p(), cmap="Blues", aspect="auto")
        for i, j in torch.cartesian_prod(torch.arange(10), torch.arange(10)).tolist():
            color = "white" if matrix[i, j].log1p() > matrix.max().log1p() / 2 else "black"
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=8, color=color)
        ax.set(xticks=range(10), yticks=range(10))
        ax.tick_params(length=0, labelsize=9)
        ax.set_xlabel("predicted", fontsize=9, labelpad=1)
        ax.set_ylabel("true", fontsize=9, labelpad=1)
        ax.set_title("test set confusion matrix", fontsize=10)
        writer.add_figure("pictures/confusion_matrix", fig, step)

        x, y, pred, confidence = (torch.cat(parts) for parts in zip(*self.wrong, strict=True))
        order = confidence.argsort(descending=True)[: self.mistakes]
        fig = mistakes_figure(x, y, pred, confidence, order)
        writer.add_figure("pictures/confident_mistakes", fig, step)
        writer.add_figure("pictures/reliability", reliability_figure(calibration.cpu()), step)


def calibration_counts(confidence: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """Per confidence bin: the images, the correct ones and their summed confidence, (3, bins + 1)
    in float64 on the CPU. Binned as torchmetrics bins for test/ece: CALIBRATION_BINS of equal
    width, a confidence on an edge in the bin above it, and one of exactly 1 in a bin of its own."""
    edges = torch.linspace(0, 1, CALIBRATION_BINS + 1, dtype=confidence.dtype,
                           device=confidence.device)  # fmt: skip
    slot = (torch.bucketize(confidence, edges, right=True) - 1).cpu()
    counts = torch.zeros(3, CALIBRATION_BINS + 1, dtype=torch.float64)
    for row, values in enumerate((torch.ones_like(confidence), correct, confidence)):
        counts[row].index_add_(0, slot, values.cpu().double())
    return counts


def calibration_error(counts: torch.Tensor) -> float:
    """The expected calibration error of `calibration_counts`: each bin's |accuracy - mean
    confidence| weighted by its share of the images (torchmetrics' l1 norm, test/ece)."""
    images, correct, confidence = counts
    return float((correct - confidence).abs().sum() / images.sum())


def reliability_figure(counts: torch.Tensor) -> Figure:
    """Accuracy per confidence bin as bars against the diagonal of a calibrated net, each bin's
    mean confidence as a line across its bar, the images of each bin written in a strip underneath
    and the ECE in the title. `counts`: `calibration_counts` summed over the test set."""
    ece = calibration_error(counts)
    # The bin of a confidence of exactly 1 (often hundreds of images) drawn with the last one.
    shown = counts[:, :CALIBRATION_BINS].clone()
    shown[:, -1] += counts[:, CALIBRATION_BINS]
    images, correct, confidence = shown
    filled = images > 0
    accuracy, mean_confidence = correct / images.clamp_min(1), confidence / images.clamp_min(1)
    width = 1 / CALIBRATION_BINS
    left = torch.arange(CALIBRATION_BINS) * width
    fig = Figure(figsize=(CARD_INCHES, CARD_INCHES + 0.4))
    ax = fig.add_axes((0.16, 0.36, 0.8, 0.56))
    ax.bar(left[filled], accuracy[filled], width=width, align="edge", color="tab:blue",
           edgecolor="white", linewidth=0.5, label="accuracy")  # fmt: skip
    # A line rather than a shaded gap: a gap drawn over a bar would hide where the bar ends.
    ax.hlines(mean_confidence[filled], left[filled], (left + width)[filled], colors="tab:red",
              linewidth=2, label="mean confidence")  # fmt: skip
    ax.plot([0, 1], [0, 1], "--", color="0.3", linewidth=1, label="calibrated")
    ax.set(xlim=(0, 1), ylim=(0, 1))
    ax.tick_params(labelsize=8, labelbottom=False)
    ax.set_ylabel("accuracy", fontsize=9, labelpad=2)
    # On a white ground: a bin of few images may reach up behind it.
    ax.legend(fontsize=8, loc="upper left", framealpha=0.9, edgecolor="none", handlelength=1.2)
    ax.set_title(f"test set reliability, ECE {ece:.3f}", fontsize=10)
    # The counts span 1 to thousands: shaded on a log scale, each written out, turned to fit.
    strip = fig.add_axes((0.16, 0.15, 0.8, 0.15))
    shade = images.log1p()
    strip.imshow(shade[None], cmap="Blues", aspect="auto", extent=(0, 1, 0, 1), vmin=0,
                 vmax=float(shade.max()) * 1.2)  # fmt: skip
    for k in filled.nonzero().flatten().tolist():
        color = "white" if shade[k] > shade.max() * 0.6 else "black"
        strip.text(left[k] + width / 2, 0.5, f"{int(images[k])}", rotation=90, ha="center",
                   va="center", fontsize=8, color=color)  # fmt: skip
    strip.set_yticks([])
    strip.set_ylabel("images", fontsize=9, rotation=0, ha="right", va="center", labelpad=2)
    strip.tick_params(labelsize=8)
    strip.set_xlabel("confidence (the largest softmax probability)", fontsize=9, labelpad=2)
    return fig


def pattern_grid(patterns: torch.Tensor) -> torch.Tensor:
    """The first PATTERNS of (N, h, w) patterns as one gray image for a card: each stretched to the
    full gray range on its own (its sign and scale vary), enlarged to about PATTERN_PIXELS, with
    2-pixel white lines between and around them, as torchvision's make_grid draws."""
    patterns = patterns[:PATTERNS]
    flat = patterns.flatten(1)
    low, high = flat.aminmax(dim=1, keepdim=True)
    patterns = ((flat - low) / (high - low).clamp_min(1e-5)).view_as(patterns)
    scale = max(1, PATTERN_PIXELS // patterns.shape[-1])
    patterns = patterns.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    return pad(tile(patterns, cols=PATTERN_COLS, margins=(1, 1, 1, 1)), (1, 1, 1, 1), value=1.0)


def tile(images: torch.Tensor, cols: int, margins: tuple[int, int, int, int]) -> torch.Tensor:
    """(N, h, w) images in [0, 1] → one image of `cols` cells per row, white where empty.

    Each cell is an image with white `margins` (left, right, top, bottom) around it. Done as one
    reshape: torchvision's make_grid scales and places the images one by one in Python.
    """
    rows = max(1, -(-len(images) // cols))
    cells = torch.ones(rows * cols, *images.shape[1:])
    cells[: len(images)] = images
    cells = pad(cells, margins, value=1.0)
    height, width = cells.shape[1:]
    return cells.view(rows, cols, height, width).permute(0, 2, 1, 3).reshape(rows * height, -1)


def mistakes_figure(x, y, pred, confidence, order: torch.Tensor, cols: int = 4) -> Figure:
    """The chosen digits tiled into one image with one axes over it (one axes per digit would
    take matplotlib half a second to lay out), each labelled `predicted (p) / true`."""
    # 28-pixel digits on 40×48 cells (room for two lines of label above each), drawn 2.2× large.
    grid = tile(x[order].view(-1, 28, 28).cpu(), cols, margins=(6, 6, 18, 2))
    rows = len(grid) // 48
    inches = CARD_INCHES / (cols * 40)  # per pixel of the grid
    height = rows * 48 * inches
    fig = Figure(figsize=(CARD_INCHES, height + 0.3))
    ax = fig.add_axes((0, 0, 1, height / (height + 0.3)))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    for k, i in enumerate(order.tolist()):
        row, col = divmod(k, cols)
        label = f"{pred[i]} ({confidence[i]:.2f})\ntrue {y[i]}"
        ax.text(col * 40 + 20, row * 48 + 9, label, ha="center", va="center", fontsize=8.5)
    fig.suptitle("most confident mistakes", fontsize=10, y=0.995)
    return fig
