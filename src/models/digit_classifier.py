"""The primer's MNIST network: one hidden layer between 784 pixels and 10 digit logits."""

import torch
from torch import nn

from src.models.activations import activation as make_activation


class DigitClassifier(nn.Module):
    """784 → hidden_dim → 10 multilayer perceptron; 101,770 parameters at the defaults."""

    def __init__(self, hidden_dim: int = 128, activation: str = "relu", num_classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(28 * 28, hidden_dim),
            make_activation(activation),
            nn.Linear(hidden_dim, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images (B, 1, 28, 28) or flat pixels (B, 784) to logits (B, num_classes)."""
        return self.net(x)
