"""The best epoch's checkpoint, named as the console and the epoch table count epochs: from 1."""

from lightning.pytorch.callbacks import ModelCheckpoint


class BestCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, with `{epoch}` in its file name counted from 1: the first
    epoch's file is best-epoch01.ckpt, as the table's first row is epoch 1. The checkpoint's own
    `epoch` (Lightning's counter, from 0) and the logged `train/epoch` are left as Lightning
    keeps them."""

    def format_checkpoint_name(self, metrics: dict, filename=None, ver=None, prefix=None) -> str:
        if "epoch" in metrics:
            metrics = {**metrics, "epoch": metrics["epoch"] + 1}
        return super().format_checkpoint_name(metrics, filename=filename, ver=ver, prefix=prefix)
