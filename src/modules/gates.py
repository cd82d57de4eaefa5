"""Logic gates: any network from two inputs to one output in (0, 1), regressed with MSE."""

from torch import nn
from torchmetrics.classification import BinaryAccuracy

from src.modules.supervised import SupervisedModule


class GateModule(SupervisedModule):
    """Mean squared error between the output and the truth value; accuracy after rounding."""

    input_shape = (2,)
    output_shape = (1,)

    def criteria(self):
        return nn.MSELoss(), BinaryAccuracy(threshold=0.5, validate_args=False)
