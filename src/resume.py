"""Continuing a run: what a resume may change and what it may not, and one run per directory.

A checkpoint's weights fit only the network that made them, and its place in an epoch only the
data; the optimizer's saved state fits only its own kind. Those settings are compared with the
config of the run that wrote the checkpoint (kept in it) and a change is refused. Anything else
(the learning rate, the epochs, the callbacks) may change: it is applied
(src/callbacks/resumed.py), logged and recorded. A run directory has one run, and one process
writing it at a time. Nothing here imports Lightning.
"""

import errno
import fcntl
import logging
import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from src.errors import ConfigError
from src.names import CHECKPOINTS, LAST_CKPT, RECORD

# What the checkpoint holds state for; within them, what only says how (not what) to compute.
FIXED = ("model.", "data.", "optimizer._target_", "scheduler.schedule._target_",
         "scheduler.interval")  # fmt: skip
HOW = ("data.data_dir", "data.download", "data.eval_batch_size")
NOT_SETTINGS = ("ckpt_path",)


def flat(tree, prefix: str = "") -> dict:
    """{"optimizer.lr": 0.01, ...} of a config, interpolations left as written."""
    items = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        items |= flat(value, f"{name}.") if isinstance(value, dict) else {name: value}
    return items


def resume_changes(cfg: DictConfig, then: dict | None, ckpt: Path) -> dict[str, list] | None:
    """The settings this run changes against `then`, the config of the run that wrote `ckpt`
    (kept in the checkpoint), as {key: [then, now]}; None when the checkpoint has none.
    Refuses a change that the checkpoint's state cannot follow."""
    if then is None:
        return None
    before = flat(then)
    now = flat(OmegaConf.to_container(cfg, resolve=False))
    changed = {
        key: [before.get(key), now.get(key)]
        for key in sorted(before.keys() | now.keys())
        if before.get(key) != now.get(key) and key not in NOT_SETTINGS
    }
    fixed = [key for key in changed if key.startswith(FIXED) and not key.startswith(HOW)]
    if fixed:
        listed = ", ".join(f"{key} ({changed[key][0]} → {changed[key][1]})" for key in fixed)
        raise ConfigError(
            f"ckpt_path={ckpt} was trained with other settings, which a resume cannot change: "
            f"{listed}. Resume with the run's own settings, or start a new run."
        )
    # A new learning rate scales the restored ones by now / then (src/callbacks/resumed.py).
    lr = changed.get("optimizer.lr", [1.0])[0]
    number = isinstance(lr, int | float) and not isinstance(lr, bool)
    if not (number and math.isfinite(lr) and lr > 0):
        raise ConfigError(
            f"the config in ckpt_path={ckpt}: optimizer.lr={lr!r} is not a learning rate, so the "
            "rates restored from it cannot be rescaled to this run's: resume from another "
            "checkpoint, or start a new run"
        )
    return changed


class OneRunPerDirectory(Callback):
    """Hydra callback: refuse `hydra.run.dir` pointing at another run's directory, before Hydra
    writes anything into it; a resume of that very run (ckpt_path inside it) continues there.
    A run or sweep directory that cannot be made or written is refused in one line too."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        make_directory("hydra.sweep.dir", Path(config.hydra.sweep.dir))

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        make_directory("hydra.run.dir", Path(config.hydra.run.dir))
        run_dir = Path(config.hydra.run.dir).resolve()
        # A refused start leaves only .hydra/ and train.log: not a run to protect.
        marks = [m for m in (RECORD, CHECKPOINTS) if (run_dir / m).exists()]
        ckpt = config.get("ckpt_path")
        if not marks or (ckpt and run_dir in Path(ckpt).resolve().parents):
            return
        logging.getLogger("src.train").error(
            "hydra.run.dir=%s holds another run (%s): give a new directory, or resume that run "
            "with ckpt_path=%s",
            run_dir, ", ".join(marks), run_dir / LAST_CKPT,
        )  # fmt: skip
        sys.exit(2)


def make_directory(key: str, path: Path) -> None:
    """Make the directory `key` names, as Hydra is about to; exit with one line if it cannot be
    made or written (a file of that name, a read-only file system, a name too long)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise PermissionError(errno.EACCES, "it cannot be written", str(path))
    except OSError as err:
        what = "a file has that name" if err.errno == errno.EEXIST else err.strerror or str(err)
        where = f": {err.filename}" if err.filename and Path(err.filename) != path else ""
        print(f"error: {key}={path} cannot be made a directory ({what}{where}): give another",
              file=sys.stderr)  # fmt: skip
        sys.exit(2)


@contextmanager
def sole_writer(run_dir: Path) -> Iterator[bool]:
    """Hold `run_dir` for this process while the block runs: True, or False when another process
    holds it (two sweeps into one hydra.sweep.dir reach the same job). The lock is the OS's
    (flock): it goes with the process that holds it, however that process ends."""
    if not first_process():
        yield True  # the other ranks of a distributed run write into rank 0's directory
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    directory = os.open(run_dir, os.O_RDONLY)  # the lock is on the directory itself: no file
    try:
        fcntl.flock(directory, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(directory)
        yield False
        return
    try:
        yield True
    finally:
        os.close(directory)


def first_process() -> bool:
    """Whether this process is rank 0 of a distributed run, or the only one, by the variables
    its launcher sets: torchrun RANK, Lightning's own NODE_RANK and LOCAL_RANK, SLURM's task id."""
    ranks = ("RANK", "NODE_RANK", "LOCAL_RANK", "SLURM_PROCID")
    return all(os.environ.get(name, "0") == "0" for name in ranks)
