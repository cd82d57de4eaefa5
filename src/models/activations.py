"""The hidden-layer nonlinearities a network may be built with, by name."""

from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
}


def activation(name: str) -> nn.Module:
    """A fresh activation layer for `name`; a ValueError names the valid ones."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"activation {name!r} is not one of: {', '.join(ACTIVATIONS)}") from None
