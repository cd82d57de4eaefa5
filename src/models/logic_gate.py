"""The primer's logic-gate network: two inputs, one small hidden layer, one sigmoid output."""

import torch
from torch import nn

from src.checks import at_least
from src.models.activations import activation as make_activation


class LogicGateNet(nn.Module):
    """2 → hidden_dim → 1 net whose sigmoid output approximates a gate's truth value."""

    def __init__(self, hidden_dim: int, activation: str):
        super().__init__()
        at_least(1, hidden_dim=hidden_dim)
        self.hidden = nn.Linear(2, hidden_dim)
        self.act = make_activation(activation)
        self.out = nn.Linear(hidden_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Input pairs (B, 2) → outputs in (0, 1) of shape (B, 1)."""
        return torch.sigmoid(self.out(self.act(self.hidden(x))))
