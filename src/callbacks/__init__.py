"""Lightning callbacks that report what a run learned."""

from src.callbacks.best import BestCheckpoint, RunCheckpoint
from src.callbacks.config_in_checkpoints import ConfigInCheckpoints
from src.callbacks.digit_pictures import DigitPictures
from src.callbacks.epoch_table import EpochTable
from src.callbacks.gate_pictures import GatePictures
from src.callbacks.progress import EpochProgressBar
from src.callbacks.resumed import ResumedSettings
from src.callbacks.stop import CheckpointOnStop, StopTogether, stop_asked
from src.callbacks.truth_table import TruthTable

__all__ = [
    "BestCheckpoint",
    "CheckpointOnStop",
    "ConfigInCheckpoints",
    "DigitPictures",
    "EpochProgressBar",
    "EpochTable",
    "GatePictures",
    "ResumedSettings",
    "RunCheckpoint",
    "StopTogether",
    "TruthTable",
    "stop_asked",
]
