"""LightningModules, one per task: a network paired with its loss, metrics and optimizer."""

from src.modules.digits import DigitModule
from src.modules.gates import GateModule
from src.modules.supervised import Diverged, NetworkMismatch

__all__ = ["DigitModule", "Diverged", "GateModule", "NetworkMismatch"]
