"""The hidden-layer nonlinearities a network may be built with, by name."""

from torch import nn

from src.checks import one_of

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
}


def activation(name: str) -> nn.Module:
    """A fresh activation layer for `name`; a ValueError names the valid ones."""
    one_of("activation", name, ACTIVATIONS)
    return ACTIVATIONS[name]()
