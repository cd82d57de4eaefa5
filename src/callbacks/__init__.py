"""Lightning callbacks that report what a run learned."""

from src.callbacks.epoch_table import EpochTable
from src.callbacks.pictures import DigitPictures, GatePictures
from src.callbacks.progress import EpochProgressBar
from src.callbacks.truth_table import TruthTable

__all__ = ["DigitPictures", "EpochProgressBar", "EpochTable", "GatePictures", "TruthTable"]
