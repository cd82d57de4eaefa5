"""Pictures of what a two-input net (a logic gate's, or any of 2 features and a 0/1 target)
learned, written to TensorBoard's IMAGES tab."""

import lightning as L
import torch
from matplotlib.figure import Figure
from torch.func import functional_call

from src.checks import at_least
from src.loggers import tensorboard_writer

HIDDEN_INPUTS = 8  # rows of the hidden-activations picture: a truth table's 4, a few of a cloud's


class GatePictures(L.Callback):
    """Two-input runs: the net's output over the box its training inputs span, with those points,
    before training and after every epoch; and at the end the activations of its first hidden layer
    (the output of its first activation module) for the first HIDDEN_INPUTS distinct inputs. For a
    logic gate, the unit square with the four truth-table points, and the four inputs.

    The points are the training batches' of the fit's first epoch, as Lightning hands them to
    `on_train_batch_end`: whatever the datamodule, nothing is read from it. The weights are copied
    as training goes (a few small tensors), and the surfaces computed from them and drawn when fit
    ends, when the box is known: a matplotlib figure takes longer to draw than a thousand steps of
    these nets.
    """

    def __init__(self, resolution: int):
        at_least(2, resolution=resolution)
        self.resolution = resolution
        self.weights: list[tuple[int, dict[str, torch.Tensor]]] = []  # (step, state_dict)
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.first_epoch = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.weights, self.batches = [], []
        self.first_epoch = trainer.current_epoch
        self.take_weights(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.first_epoch:  # later epochs hold the same points
            self.batches.append(batch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.take_weights(trainer, pl_module)

    def take_weights(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = {name: value.detach().clone() for name, value in pl_module.state_dict().items()}
        self.weights.append((trainer.global_step, state))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = tensorboard_writer(trainer)
        # A fit that trained no step (resumed from its final checkpoint) saw no points.
        if writer is None or not trainer.is_global_zero or not self.batches:
            return
        # A full-batch dataset hands over the same rows every step: each point once.
        rows = [torch.cat([x, y.view(len(y), -1)], dim=1) for x, y in self.batches]
        points = torch.unique(torch.cat(rows), dim=0)
        x, y = points[:, :2], points[:, 2]
        low, high = x.aminmax(dim=0)
        high = torch.where(low < high, high, low + 1)  # a box even around one line of points
        extent = (low[0].item(), high[0].item(), low[1].item(), high[1].item())
        axes = [torch.linspace(lo, hi, self.resolution, device=x.device) for lo, hi in
                zip(low.tolist(), high.tolist(), strict=True)]  # fmt: skip
        grid = torch.cartesian_prod(*axes)  # (x1, x2) pairs, x1 varying slowest
        x_cpu, y_cpu = x.cpu(), y.cpu()
        for step, state in self.weights:
            with torch.no_grad():
                surface = functional_call(pl_module, state, (grid,))
            surface = surface.view(self.resolution, self.resolution).T.cpu()
            writer.add_figure("pictures/output_surface", surface_figure(surface, extent, x_cpu,
                              y_cpu, step), step)  # fmt: skip
        self.weights, self.batches = [], []

        shown = x[:HIDDEN_INPUTS]
        hidden = hidden_activations(pl_module.net, shown)
        if hidden is not None:
            fig = hidden_figure(hidden, shown.cpu())
            writer.add_figure("pictures/hidden_activations", fig, trainer.global_step)


def surface_figure(surface: torch.Tensor, extent: tuple, x: torch.Tensor, y: torch.Tensor,
                   step: int) -> Figure:  # fmt: skip
    """The output over the box `extent` (x1 from, to, x2 from, to), with the points `x` coloured
    by their targets `y`."""
    fig = Figure(figsize=(4.5, 4))
    ax = fig.subplots()
    image = ax.imshow(surface, origin="lower", extent=extent, vmin=0, vmax=1, cmap="RdBu_r")
    # A truth table's four points large, a cloud's small enough to see the surface between them.
    size = min(160, max(10, 640 / len(x)))
    ax.scatter(*x.T, c=y, cmap="RdBu_r", vmin=0, vmax=1, s=size, edgecolors="black",
               clip_on=False, zorder=3)  # fmt: skip
    ax.set(xlabel="x1", ylabel="x2")
    ax.set_title(f"output after step {step}", pad=12)  # clear of the top-edge points
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return fig


def hidden_figure(hidden: torch.Tensor, x: torch.Tensor) -> Figure:
    """The activations `hidden` (inputs × units) as a table of shaded, written-out values."""
    rows, units = hidden.shape
    fig = Figure(figsize=(1.2 + 0.7 * units, 1 + 0.5 * rows))
    ax = fig.subplots()
    ax.imshow(hidden, vmin=0, vmax=1, cmap="viridis")
    for i, j in torch.cartesian_prod(torch.arange(rows), torch.arange(units)).tolist():
        color = "black" if hidden[i, j] > 0.5 else "white"
        ax.text(j, i, f"{hidden[i, j]:.2f}", ha="center", va="center", fontsize=8, color=color)
    labels = [f"({a:.2g},{b:.2g})" for a, b in x.tolist()]  # (0,1) for a gate's inputs
    ax.set(xlabel="hidden unit", ylabel="input", yticks=range(rows), yticklabels=labels,
           xticks=range(units), title="hidden activations")  # fmt: skip
    fig.tight_layout()
    return fig


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
