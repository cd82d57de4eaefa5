"""A run's directory: made, or refused in one line; one run in it, and one process writing it
at a time. Nothing here imports Lightning."""

import errno
import fcntl
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from src.names import CHECKPOINTS, LAST_CKPT, RECORD


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
