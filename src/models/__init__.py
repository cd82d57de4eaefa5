"""Plain PyTorch networks: no training logic, no Lightning."""

from src.models.digit_classifier import DigitClassifier
from src.models.logic_gate import LogicGateNet

__all__ = ["DigitClassifier", "LogicGateNet"]
