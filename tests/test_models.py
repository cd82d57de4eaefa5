import pytest
import torch
from torch import nn

from src.models import DigitClassifier, LogicGateNet
from src.models.activations import ACTIVATIONS


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_digit_classifier_has_the_primers_101770_parameters():
    assert n_params(DigitClassifier()) == 101_770  # 784*128 + 128 + 128*10 + 10


def test_digit_classifier_hidden_size_and_shapes():
    net = DigitClassifier(hidden_dim=256)
    assert n_params(net) == 784 * 256 + 256 + 256 * 10 + 10
    assert net(torch.rand(5, 1, 28, 28)).shape == (5, 10)
    assert net(torch.rand(5, 784)).shape == (5, 10)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_every_activation_name_builds_its_layer(name):
    net = DigitClassifier(activation=name)
    assert isinstance(net.net[2], ACTIVATIONS[name])


def test_unknown_activation_names_the_valid_ones():
    with pytest.raises(ValueError, match="model.activation='swish'.*relu, gelu"):
        DigitClassifier(activation="swish")


def test_logic_gate_net_is_2_3_1_with_outputs_in_0_1():
    net = LogicGateNet()
    assert n_params(net) == 2 * 3 + 3 + 3 * 1 + 1
    out = net(torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]))
    assert out.shape == (4, 1)
    assert ((out > 0) & (out < 1)).all()
