"""The plain networks: shapes, parameter counts, and a floor that needs nothing but torch."""

import subprocess
import sys

import pytest
import torch
from torch import nn

from src.models import CNN, MLP, DigitClassifier, LogicGateNet
from src.models.activations import ACTIVATIONS
from tests.conftest import REPO


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_digit_classifier_has_the_primers_101770_parameters():
    net = DigitClassifier(hidden_dim=128, activation="relu")
    assert n_params(net) == 101_770  # 784*128 + 128 + 128*10 + 10
    assert net(torch.rand(5, 1, 28, 28)).shape == (5, 10)
    assert net(torch.rand(5, 784)).shape == (5, 10)


def test_mlp_of_any_depth():
    assert n_params(MLP([256, 128], "relu")) == 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10
    assert n_params(MLP([], "relu")) == 784 * 10 + 10  # softmax regression
    deep = MLP([64, 64, 64], "tanh")
    assert deep(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    assert sum(isinstance(m, nn.Tanh) for m in deep.modules()) == 3
    # hidden_dims=[128] is the primer's network, weight for weight from the same seed.
    torch.manual_seed(0)
    mlp = MLP([128], "relu")
    torch.manual_seed(0)
    primer = DigitClassifier(128, "relu")
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(mlp(x), primer(x))


def test_cnn_shapes_and_size():
    net = CNN(channels=[16, 32], hidden_dim=128, activation="relu")
    assert net(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    # 3×3 convolutions 1→16→32, then 32 × 7 × 7 features → 128 → 10.
    assert n_params(net) == (9 * 16 + 16) + (9 * 16 * 32 + 32) + (32 * 49 * 128 + 128) + 1290
    assert CNN([8], 16, "gelu")(torch.rand(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_every_activation_name_builds_its_layer(name):
    net = DigitClassifier(hidden_dim=8, activation=name)
    assert isinstance(net.act, ACTIVATIONS[name])


def test_unknown_activation_names_the_valid_ones():
    with pytest.raises(ValueError, match="activation='swish' is not one of: relu, gelu"):
        DigitClassifier(hidden_dim=8, activation="swish")


def test_logic_gate_net_is_2_3_1_with_outputs_in_0_1():
    net = LogicGateNet(hidden_dim=3, activation="sigmoid")
    assert n_params(net) == 2 * 3 + 3 + 3 * 1 + 1
    out = net(torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]))
    assert out.shape == (4, 1)
    assert ((out > 0) & (out < 1)).all()


def test_the_networks_need_nothing_but_torch():
    code = (
        "import sys, src.models\n"
        "extra = {m.split('.')[0] for m in sys.modules} & {'hydra', 'omegaconf', 'lightning', "
        "'torchmetrics', 'torchvision'}\n"
        "assert not extra, extra"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
