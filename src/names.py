"""The names of a run's files and of the metrics its record keeps, spelled once for src/ (the YAML
under conf/ spells its own, as it cannot import them: conf/callbacks/default.yaml's checkpoints)."""

from pathlib import Path

RECORD = "metrics.json"  # a run's record, in its directory (src/run_record.py)
CHECKPOINTS = "checkpoints"  # the folder of a run's checkpoints
LAST_CKPT = Path(CHECKPOINTS, "last.ckpt")  # in a run's directory: the checkpoint to resume from
LR_FIND_PLOT = "lr_find.png"  # in a run's directory, with lr_find=true

# What a run's record keeps of what its module logs (src/modules/supervised.py), in this order.
FINAL_METRICS = ("train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc",
                 "test/ece")  # fmt: skip
