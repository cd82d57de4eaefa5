"""Pictures of what a network learned, written to TensorBoard's IMAGES and HISTOGRAMS tabs."""

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure
from torchmetrics.classification import MulticlassConfusionMatrix
from torchvision.utils import make_grid


def tensorboard(trainer: L.Trainer):
    """The run's TensorBoard SummaryWriter, or None when no TensorBoard logger is configured."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


class DigitPictures(L.Callback):
    """MNIST runs: first-layer weights as 28×28 images and weight/gradient histograms each epoch;
    after testing, the confusion matrix and the most confidently misclassified test digits.

    Each hidden neuron's weights are the pattern it measures the input's similarity to.
    """

    def __init__(self, histograms: bool = True, mistakes: int = 36):
        self.histograms = histograms
        self.mistakes = mistakes

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = tensorboard(trainer)
        if writer is None or not trainer.is_global_zero:
            return
        step = trainer.global_step
        first = next(m for m in pl_module.net.modules() if isinstance(m, torch.nn.Linear))
        patterns = first.weight.detach().cpu().view(-1, 1, 28, 28)
        grid = make_grid(patterns, nrow=16, normalize=True, scale_each=True, pad_value=1.0)
        writer.add_image("pictures/first_layer_weights", grid, step)
        if self.histograms:
            for name, param in pl_module.net.named_parameters():
                writer.add_histogram(f"weights/{name}", param.detach().cpu(), step)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        # The gradients of each epoch's last step: by the epoch's end they are zeroed again.
        if not (self.histograms and trainer.is_last_batch and trainer.is_global_zero):
            return
        writer = tensorboard(trainer)
        for name, param in pl_module.net.named_parameters():
            if writer is not None and param.grad is not None:
                writer.add_histogram(
                    f"gradients/{name}", param.grad.detach().cpu(), trainer.global_step + 1
                )

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
        cols = 6
        rows = max(1, -(-len(order) // cols))
        fig = Figure(figsize=(cols * 1.4, rows * 1.6))
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, i in zip(axes.flat, order.tolist(), strict=False):
            ax.imshow(x[i].view(28, 28), cmap="gray")
            ax.set_title(f"{pred[i]} ({confidence[i]:.2f})\ntrue {y[i]}", fontsize=8)
        fig.suptitle("most confident mistakes: predicted (p), true", fontsize=9)
        fig.tight_layout()
        writer.add_figure("pictures/confident_mistakes", fig, step)


class GatePictures(L.Callback):
    """Logic-gate runs: the net's output over the unit square with the four truth-table points,
    every `every_n_epochs` epochs (and after the first), and the hidden layer's activations for
    the four inputs at the end."""

    def __init__(self, every_n_epochs: int = 10, resolution: int = 64):
        self.every_n_epochs = every_n_epochs
        self.resolution = resolution

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        writer = tensorboard(trainer)
        if writer is None or (epoch % self.every_n_epochs and epoch != 1):
            return
        x, y = trainer.datamodule.table.tensors
        axis = torch.linspace(0, 1, self.resolution, device=x.device)
        grid = torch.cartesian_prod(axis, axis)  # (x1, x2) pairs, x1 varying slowest
        with torch.no_grad():
            surface = pl_module(grid).view(self.resolution, self.resolution).T.cpu()
        fig = Figure(figsize=(4.5, 4))
        ax = fig.subplots()
        image = ax.imshow(
            surface, origin="lower", extent=(0, 1, 0, 1), vmin=0, vmax=1, cmap="RdBu_r"
        )
        ax.scatter(*x.cpu().T, c=y.cpu().flatten(), cmap="RdBu_r", vmin=0, vmax=1, s=160,
                   edgecolors="black", clip_on=False, zorder=3)  # fmt: skip
        title = f"output after epoch {epoch} (step {trainer.global_step})"
        ax.set(xlabel="x1", ylabel="x2")
        ax.set_title(title, pad=12)  # clear of the truth-table points on the top edge
        fig.colorbar(image, ax=ax)
        fig.tight_layout()
        writer.add_figure("pictures/output_surface", fig, trainer.global_step)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        writer = tensorboard(trainer)
        if writer is None:
            return
        x, _ = trainer.datamodule.table.tensors
        with torch.no_grad():
            hidden = pl_module.net.hidden_activations(x).cpu()
        fig = Figure(figsize=(1.2 + 0.7 * hidden.shape[1], 3))
        ax = fig.subplots()
        ax.imshow(hidden, vmin=0, vmax=1, cmap="viridis")
        rows, units = hidden.shape
        for i, j in torch.cartesian_prod(torch.arange(rows), torch.arange(units)).tolist():
            color = "black" if hidden[i, j] > 0.5 else "white"
            ax.text(j, i, f"{hidden[i, j]:.2f}", ha="center", va="center", fontsize=8, color=color)
        labels = [f"({a:.0f},{b:.0f})" for a, b in x.cpu().tolist()]
        ax.set(xlabel="hidden unit", ylabel="input", yticks=range(len(labels)), yticklabels=labels,
               xticks=range(hidden.shape[1]), title="hidden activations")  # fmt: skip
        fig.tight_layout()
        writer.add_figure("pictures/hidden_activations", fig, trainer.global_step)
