"""A multilayer perceptron of any depth, for MNIST-format images."""

import torch
from torch import nn

from src.checks import one_of, require
from src.models.activations import ACTIVATIONS
from src.models.activations import activation as make_activation


class MLP(nn.Module):
    """784 → hidden_dims[0] → … → hidden_dims[-1] → 10, the activation after every hidden layer.

    `hidden_dims=[128]` is the primer's DigitClassifier; `[]` is plain softmax regression.
    """

    def __init__(self, hidden_dims: list[int], activation: str):
        super().__init__()
        require(all(d >= 1 for d in hidden_dims), "hidden_dims", list(hidden_dims),
                "must hold widths of at least 1")  # fmt: skip
        one_of("activation", activation, ACTIVATIONS)  # with no hidden layer too
        widths = [28 * 28, *hidden_dims]
        layers = []
        for n_in, n_out in zip(widths, widths[1:], strict=False):
            layers += [nn.Linear(n_in, n_out), make_activation(activation)]
        self.hidden = nn.Sequential(*layers)
        self.out = nn.Linear(widths[-1], 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 1, 28, 28) → logits (B, 10)."""
        return self.out(self.hidden(x.flatten(1)))
