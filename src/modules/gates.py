"""Logic gates: any network from two inputs to one output in (0, 1), regressed with MSE."""

from torch import nn
from torchmetrics.classification import BinaryAccuracy

from src.modules.supervised import OptimizerFactory, SupervisedModule


class GateModule(SupervisedModule):
    """Mean squared error between the output and the truth value; accuracy after rounding."""

    input_shape = (2,)
    output_shape = (1,)

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory | None = None,
        scheduler: dict | None = None,
    ):
        super().__init__(
            net=net,
            loss=nn.MSELoss(),
            accuracy=BinaryAccuracy(threshold=0.5, validate_args=False),
            optimizer=optimizer,
            scheduler=scheduler,
        )
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
