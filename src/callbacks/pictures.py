"""Pictures of what a network learned, written to TensorBoard's IMAGES and HISTOGRAMS tabs."""

import contextlib

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure
from torch.nn.functional import pad
from torchmetrics.classification import MulticlassConfusionMatrix

HIST_BINS = 64


def tensorboard(trainer: L.Trainer):
    """The run's TensorBoard SummaryWriter, or None when no TensorBoard logger is configured."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


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


def add_histogram(writer, tag: str, values: torch.Tensor, step: int) -> None:
    """`values` as a histogram in TensorBoard's HISTOGRAMS tab (see `histogram`)."""
    writer.add_histogram_raw(tag, global_step=step, **histogram(values))


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
    each epoch; after testing, the confusion matrix and the most confidently misclassified digits.

    Each hidden unit's weights are the pattern it measures the input's similarity to. The epoch
    pictures are taken as training goes (a gray grid and bucket counts: a few milliseconds) but
    written when fit ends: TensorBoard's writer checksums every byte in Python, on a thread that
    would hold up training for longer than the epoch's validation takes.
    """

    # Its on_train_batch_end looks only at the epoch's last step, on which a group of steps per
    # training_step call always ends (src/modules/grouping.py).
    epoch_level_step_hooks = True

    def __init__(self, histograms: bool, mistakes: int = 36):
        self.histograms = histograms
        self.mistakes = mistakes
        self.images: list[tuple[int, torch.Tensor]] = []  # (step, grid)
        self.counts: list[tuple[str, int, dict]] = []  # (tag, step, histogram)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if tensorboard(trainer) is None or not trainer.is_global_zero:
            return
        step = trainer.global_step
        patterns = first_layer_patterns(pl_module.net)
        if patterns is not None:
            # Each pattern stretched to the full gray range on its own, as its sign and scale vary.
            flat = patterns.flatten(1)
            low, high = flat.aminmax(dim=1, keepdim=True)
            patterns = ((flat - low) / (high - low).clamp_min(1e-5)).view_as(patterns)
            # 2-pixel white lines between and around the patterns, as torchvision's make_grid draws.
            grid = pad(tile(patterns, cols=16, margins=(1, 1, 1, 1)), (1, 1, 1, 1), value=1.0)
            self.images.append((step, grid))
        if self.histograms:
            for name, param in pl_module.net.named_parameters():
                self.counts.append((f"weights/{name}", step, histogram(param)))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # The gradients of the epoch's last optimizer step: zeroed before validation.
        if not (self.histograms and trainer.is_last_batch and trainer.is_global_zero):
            return
        if tensorboard(trainer) is None:
            return
        for name, param in pl_module.net.named_parameters():
            if param.grad is not None:
                step = trainer.global_step
                self.counts.append((f"gradients/{name}", step, histogram(param.grad)))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.write(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception) -> None:
        # What was taken before the run stopped, unless writing is what failed (a full disk).
        if not isinstance(exception, OSError):
            with contextlib.suppress(OSError):
                self.write(trainer)

    def write(self, trainer: L.Trainer) -> None:
        writer = tensorboard(trainer)
        if writer is not None:
            for step, grid in self.images:
                writer.add_image("pictures/first_layer_weights", grid, step, dataformats="HW")
            for tag, step, counts in self.counts:
                writer.add_histogram_raw(tag, global_step=step, **counts)
        self.images, self.counts = [], []

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.confusion = MulticlassConfusionMatrix(num_classes=10).to(pl_module.device)
        self.wrong: list[tuple[torch.Tensor, ...]] = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        with torch.no_grad():
            probs = pl_module(x).softmax(dim=1)
        confidence, pred = probs.max(dim=1)
        self.confusion.update(pred, y)
        wrong = pred != y
        self.wrong.append(tuple(t[wrong].cpu() for t in (x, y, pred, confidence)))

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Every rank takes part in summing the confusion matrix under DDP; rank 0 draws it
        # (and the mistakes from its own share of the test set).
        matrix = self.confusion.compute().cpu()
        writer = tensorboard(trainer)
        if writer is None or not trainer.is_global_zero:
            return
        step = trainer.global_step
        fig = Figure(figsize=(6, 5.5))
        ax = fig.subplots()
        ax.imshow(matrix.log1p(), cmap="Blues")
        for i, j in torch.cartesian_prod(torch.arange(10), torch.arange(10)).tolist():
            color = "white" if matrix[i, j] > matrix.max() / 2 else "black"
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7, color=color)
        ax.set(xlabel="predicted", ylabel="true", xticks=range(10), yticks=range(10))
        ax.set_title("test set confusion matrix")
        writer.add_figure("pictures/confusion_matrix", fig, step)

        x, y, pred, confidence = (torch.cat(parts) for parts in zip(*self.wrong, strict=True))
        order = confidence.argsort(descending=True)[: self.mistakes]
        fig = mistakes_figure(x, y, pred, confidence, order)
        writer.add_figure("pictures/confident_mistakes", fig, step)


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


def mistakes_figure(x, y, pred, confidence, order: torch.Tensor, cols: int = 6) -> Figure:
    """The chosen digits tiled into one image with one axes over it (one axes per digit would
    take matplotlib half a second to lay out), each labelled `predicted (p) / true`."""
    # 28-pixel digits on 40×48 cells: room for two lines of label above each one.
    grid = tile(x[order].view(-1, 28, 28).cpu(), cols, margins=(6, 6, 18, 2))
    rows = len(grid) // 48
    fig = Figure(figsize=(cols * 1.4, rows * 1.6 + 0.3))
    ax = fig.add_axes((0, 0, 1, rows * 1.6 / (rows * 1.6 + 0.3)))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    for k, i in enumerate(order.tolist()):
        row, col = divmod(k, cols)
        label = f"{pred[i]} ({confidence[i]:.2f})\ntrue {y[i]}"
        ax.text(col * 40 + 20, row * 48 + 9, label, ha="center", va="center", fontsize=8)
    fig.suptitle("most confident mistakes: predicted (p), true", fontsize=9, y=0.995)
    return fig


class GatePictures(L.Callback):
    """Logic-gate runs: the net's output over the unit square with the four truth-table points
    before training and after every epoch, and at the end the activations of its first hidden
    layer (the output of its first activation module) for the four inputs.

    The surfaces are computed as training goes (one forward pass over a grid) but drawn when fit
    ends: a matplotlib figure takes longer to draw than a thousand steps of these nets.
    """

    def __init__(self, resolution: int):
        self.resolution = resolution
        self.surfaces: list[tuple[int, torch.Tensor]] = []  # (step, output grid)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.surfaces = []
        self.capture(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.capture(trainer, pl_module)

    def capture(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        x, _ = trainer.datamodule.table.tensors
        axis = torch.linspace(0, 1, self.resolution, device=x.device)
        grid = torch.cartesian_prod(axis, axis)  # (x1, x2) pairs, x1 varying slowest
        with torch.no_grad():
            surface = pl_module(grid).view(self.resolution, self.resolution).T.cpu()
        self.surfaces.append((trainer.global_step, surface))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = tensorboard(trainer)
        if writer is None or not trainer.is_global_zero:
            return
        x, y = (t.cpu() for t in trainer.datamodule.table.tensors)
        for step, surface in self.surfaces:
            fig = Figure(figsize=(4.5, 4))
            ax = fig.subplots()
            image = ax.imshow(
                surface, origin="lower", extent=(0, 1, 0, 1), vmin=0, vmax=1, cmap="RdBu_r"
            )
            ax.scatter(*x.T, c=y.flatten(), cmap="RdBu_r", vmin=0, vmax=1, s=160,
                       edgecolors="black", clip_on=False, zorder=3)  # fmt: skip
            ax.set(xlabel="x1", ylabel="x2")
            ax.set_title(f"output after step {step}", pad=12)  # clear of the top-edge points
            fig.colorbar(image, ax=ax)
            fig.tight_layout()
            writer.add_figure("pictures/output_surface", fig, step)
        self.surfaces = []

        hidden = hidden_activations(pl_module.net, trainer.datamodule.table.tensors[0])
        if hidden is None:
            return
        fig = Figure(figsize=(1.2 + 0.7 * hidden.shape[1], 3))
        ax = fig.subplots()
        ax.imshow(hidden, vmin=0, vmax=1, cmap="viridis")
        rows, units = hidden.shape
        for i, j in torch.cartesian_prod(torch.arange(rows), torch.arange(units)).tolist():
            color = "black" if hidden[i, j] > 0.5 else "white"
            ax.text(j, i, f"{hidden[i, j]:.2f}", ha="center", va="center", fontsize=8, color=color)
        labels = [f"({a:.0f},{b:.0f})" for a, b in x.tolist()]
        ax.set(xlabel="hidden unit", ylabel="input", yticks=range(len(labels)), yticklabels=labels,
               xticks=range(hidden.shape[1]), title="hidden activations")  # fmt: skip
        fig.tight_layout()
        writer.add_figure("pictures/hidden_activations", fig, trainer.global_step)


ACTIVATION_LAYERS = (
    torch.nn.Sigmoid, torch.nn.Tanh, torch.nn.ReLU, torch.nn.GELU, torch.nn.LeakyReLU,
)  # fmt: skip


def hidden_activations(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The output of the net's first activation layer for the inputs `x`, (B, units) on the CPU;
    None when it has no such layer (a net without a hidden layer, or a functional activation)."""
    layer = next((m for m in net.modules() if isinstance(m, ACTIVATION_LAYERS)), None)
    if layer is None:
        return None
    seen = []
    handle = layer.register_forward_hook(lambda module, args, out: seen.append(out))
    try:
        with torch.no_grad():
            net(x)
    finally:
        handle.remove()
    return seen[0].flatten(1).cpu() if seen else None
