"""Digit classification: any network from MNIST-format images to 10 logits, with cross-entropy."""

from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from src.modules.supervised import SupervisedModule


class DigitModule(SupervisedModule):
    """Cross-entropy over 10 classes; accuracy is the fraction of correct argmaxes."""

    input_shape = (1, 28, 28)
    output_shape = (10,)
    num_classes = 10

    def criteria(self):
        return nn.CrossEntropyLoss(), MulticlassAccuracy(10, average="micro", validate_args=False)
