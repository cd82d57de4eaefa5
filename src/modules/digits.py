"""Digit classification: the DigitClassifier trained with cross-entropy."""

from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from src.models import DigitClassifier
from src.modules.supervised import OptimizerFactory, SupervisedModule


class DigitModule(SupervisedModule):
    """Cross-entropy over 10 digit classes; accuracy is the fraction of correct argmaxes."""

    def __init__(
        self,
        hidden_dim: int = 128,
        activation: str = "relu",
        num_classes: int = 10,
        optimizer: OptimizerFactory | None = None,
    ):
        super().__init__(
            net=DigitClassifier(hidden_dim, activation, num_classes),
            loss=nn.CrossEntropyLoss(),
            accuracy=MulticlassAccuracy(num_classes, average="micro", validate_args=False),
            optimizer=optimizer,
        )
        # Plain values only, so a checkpoint rebuilds the module without the Hydra config.
        self.save_hyperparameters(ignore=["optimizer"])
