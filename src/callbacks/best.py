"""The run's checkpoint callbacks: a record of their files kept to the run's own directory, and
the best epoch's file named as the console and the epoch table count epochs: from 1."""

from lightning.pytorch.callbacks import ModelCheckpoint


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, taking up the record of the files it wrote (the best score,
    the best and the last file) from a checkpoint of its own directory only.

    A resume goes into a new run directory unless it names the stopped run's own, and the files
    that record lists stay in the other one: a new directory starts its record afresh, as
    Lightning's then does too (less the path of the other run's best file, and a warning that
    it kept nothing else). Its best file is the best of the epochs trained there.
    """

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("dirpath", self.dirpath) == self.dirpath:
            super().load_state_dict(state_dict)


class BestCheckpoint(RunCheckpoint):
    """Lightning's ModelCheckpoint, with `{epoch}` in its file name counted from 1: the first
    epoch's file is best-epoch01.ckpt, as the table's first row is epoch 1. The checkpoint's own
    `epoch` (Lightning's counter, from 0) is left as Lightning keeps it."""

    def format_checkpoint_name(self, metrics: dict, filename=None, ver=None, prefix=None) -> str:
        if "epoch" in metrics:
            metrics = {**metrics, "epoch": metrics["epoch"] + 1}
        return super().format_checkpoint_name(metrics, filename=filename, ver=ver, prefix=prefix)
