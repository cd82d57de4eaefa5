"""A small convolutional network for MNIST-format images."""

import torch
from torch import nn

from src.models.activations import activation as make_activation


class CNN(nn.Module):
    """Two 3×3 convolution blocks (each halving the image) and a hidden dense layer → 10 logits.

    A convolution shares one small filter over every position of the image, so a stroke is
    recognised wherever it is drawn: what a dense layer has to learn at each pixel separately.
    """

    def __init__(self, channels: list[int], hidden_dim: int, activation: str):
        super().__init__()
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
