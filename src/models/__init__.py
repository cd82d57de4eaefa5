"""Plain PyTorch networks: no training logic, no Lightning, nothing but torch."""

from src.models.cnn import CNN
from src.models.digit_classifier import DigitClassifier
from src.models.linear_gate import LinearGateNet
from src.models.logic_gate import LogicGateNet
from src.models.mlp import MLP

__all__ = ["CNN", "MLP", "DigitClassifier", "LinearGateNet", "LogicGateNet"]
