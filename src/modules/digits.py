"""Digit classification: any network from MNIST-format images to 10 logits, with cross-entropy."""

from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from src.modules.supervised import OptimizerFactory, SupervisedModule


class DigitModule(SupervisedModule):
    """Cross-entropy over 10 classes; accuracy is the fraction of correct argmaxes."""

    input_shape = (1, 28, 28)
    output_shape = (10,)
    num_classes = 10

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory | None = None,
        scheduler: dict | None = None,
    ):
        super().__init__(
            net=net,
            loss=nn.CrossEntropyLoss(),
            accuracy=MulticlassAccuracy(10, average="micro", validate_args=False),
            optimizer=optimizer,
            scheduler=scheduler,
        )
        # Plain values only (the network's settings are in the run's config), so that every
        # checkpoint loads with weights-only loading.
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
