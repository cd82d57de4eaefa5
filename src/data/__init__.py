"""LightningDataModules: where the data lives and how batches are cut."""

from src.data.logic_gates import LogicGateDataModule
from src.data.mnist import MNISTDataModule

__all__ = ["LogicGateDataModule", "MNISTDataModule"]
