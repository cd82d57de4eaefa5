"""The primer's MNIST network: one hidden layer between 784 pixels and 10 digit logits."""

import torch
from torch import nn

from src.checks import at_least
from src.models.activations import activation as make_activation


class DigitClassifier(nn.Module):
    """784 → hidden_dim → 10 multilayer perceptron; 101,770 parameters at hidden_dim=128."""

    def __init__(self, hidden_dim: int, activation: str):
        super().__init__()
        at_least(1, hidden_dim=hidden_dim)
        self.hidden = nn.Linear(28 * 28, hidden_dim)
        self.act = make_activation(activation)
        self.out = nn.Linear(hidden_dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 1, 28, 28) or flat pixels (B, 784) → logits (B, 10)."""
        return self.out(self.act(self.hidden(x.flatten(1))))
