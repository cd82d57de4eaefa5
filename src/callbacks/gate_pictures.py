"""Pictures of what a logic-gate net learned, written to TensorBoard's IMAGES tab."""

import lightning as L
import torch
from matplotlib.figure import Figure

from src.loggers import tensorboard_writer


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
        writer = tensorboard_writer(trainer)
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
