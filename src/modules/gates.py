"""Logic gates: the primer's small sigmoid net regressed onto a truth table with MSE."""

from torch import nn
from torchmetrics.classification import BinaryAccuracy

from src.models import LogicGateNet
from src.modules.supervised import OptimizerFactory, SupervisedModule


class GateModule(SupervisedModule):
    """Mean squared error between the net's output and the truth value; accuracy after rounding."""

    def __init__(
        self,
        hidden_dim: int = 3,
        activation: str = "sigmoid",
        optimizer: OptimizerFactory | None = None,
    ):
        super().__init__(
            net=LogicGateNet(hidden_dim, activation),
            loss=nn.MSELoss(),
            accuracy=BinaryAccuracy(threshold=0.5, validate_args=False),
            optimizer=optimizer,
        )
        self.save_hyperparameters(ignore=["optimizer"])
