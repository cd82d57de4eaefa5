"""One linear unit for the gates: no hidden layer, the primer's counter-example for XOR."""

import torch
from torch import nn


class LinearGateNet(nn.Module):
    """2 → 1 with a sigmoid: its output is a ramp across one straight line in the input plane."""

    def __init__(self):
        super().__init__()
        self.out = nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Input pairs (B, 2) → outputs in (0, 1) of shape (B, 1)."""
        return torch.sigmoid(self.out(x))
