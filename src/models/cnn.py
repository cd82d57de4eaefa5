"""A small convolutional network for MNIST-format images."""

import torch
from torch import nn

from src.checks import at_least, require
from src.models.activations import activation as make_activation


class CNN(nn.Module):
    """Two 3×3 convolution blocks (each halving the image) and a hidden dense layer → 10 logits.

    A convolution shares one small filter over every position of the image, so a stroke is
    recognised wherever it is drawn: what a dense layer has to learn at each pixel separately.
    """

    def __init__(self, channels: list[int], hidden_dim: int, activation: str):
        super().__init__()
        # Each block halves the 28-pixel image: after 4 there is 1 pixel left.
        require(1 <= len(channels) <= 4 and all(c >= 1 for c in channels), "channels",
                list(channels), "must hold 1 to 4 channel counts of at least 1")  # fmt: skip
        at_least(1, hidden_dim=hidden_dim)
        blocks, n_in, size = [], 1, 28
        for n_out in channels:
            blocks += [
                nn.Conv2d(n_in, n_out, kernel_size=3, padding=1),
                make_activation(activation),
                nn.MaxPool2d(2),
            ]
            n_in, size = n_out, size // 2
        self.features = nn.Sequential(*blocks)
        self.hidden = nn.Linear(n_in * size * size, hidden_dim)
        self.act = make_activation(activation)
        self.out = nn.Linear(hidden_dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 1, 28, 28) → logits (B, 10)."""
        return self.out(self.act(self.hidden(self.features(x).flatten(1))))
