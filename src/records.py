"""Run records (metrics.json, sweep summaries, reports): written whole or not at all, and read
without trusting them.

A record is written to a temporary file beside it and renamed into place, so a crash or a full
disk never leaves half of one; a record that is missing, empty or not JSON reads as None, which
the callers treat as "unknown" (an unfinished job), never as a crash.
"""

import errno
import io
import json
import os
import socket
import traceback
from pathlib import Path

import yaml

from src.errors import InputError


class RecordError(InputError, OSError):
    """A record could not be written (a full disk, a read-only folder); the message names it."""

    def __init__(self, path: Path, err: OSError):
        super().__init__(f"could not write {path}: {err.strerror or err}")
        self.errno, self.strerror, self.filename = err.errno, err.strerror, str(path)


def write_text(path: Path, text: str | bytes) -> None:
    """Write `text` to `path` atomically: the old file, or the new one, never a mixture."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as file:
            file.write(text.encode() if isinstance(text, str) else text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise RecordError(path, err) from None


def write_json(path: Path, record: dict) -> None:
    write_text(path, json.dumps(record, indent=2) + "\n")


def write_png(path: Path, fig, dpi: int = 110) -> None:
    """A matplotlib figure as a PNG file, written as atomically as any record."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    write_text(path, buffer.getvalue())


def read_json(path: Path) -> dict | None:
    """The record at `path`, or None when it is missing, empty, unreadable or not a JSON object."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def read_overrides(run_dir: Path) -> list[str] | None:
    """The command-line overrides a run was started with (its .hydra/overrides.yaml), or None when
    the file is missing, unreadable or anything but a list of strings."""
    try:
        overrides = yaml.safe_load((Path(run_dir) / ".hydra" / "overrides.yaml").read_text())
    except (OSError, ValueError, yaml.YAMLError):  # a ValueError: bytes that are not text
        return None
    overrides = [] if overrides is None else overrides
    ok = isinstance(overrides, list) and all(isinstance(o, str) for o in overrides)
    return overrides if ok else None


NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def no_room(err: BaseException | None) -> OSError | None:
    """The OSError behind `err` that says the disk is full (or read-only, or over a quota); the
    one that names its file, if any does."""
    found = []
    while err is not None:
        if isinstance(err, OSError) and err.errno in NO_ROOM:
            found.append(err)
        err = err.__cause__ or err.__context__
    return next((e for e in found if e.filename), found[0] if found else None)


def unwritten_file(err: OSError, run_dir: Path) -> Path | None:
    """The file a full disk stopped `err` from writing: the one it names, or else, for a write
    of TensorBoard's (whose writer thread reports none), this process's newest event file in
    `run_dir`; None when nothing says which file it was."""
    if err.filename:
        return Path(err.filename)
    frames = traceback.extract_tb(err.__traceback__)
    if not any("/tensorboard/" in frame.filename for frame in frames):
        return None
    # TensorBoard names its files events.out.tfevents.<time>.<host>.<pid>.<n>.
    ours = run_dir.rglob(f"events.out.tfevents.*.{socket.gethostname()}.{os.getpid()}.*")
    return max(ours, key=lambda path: path.stat().st_mtime_ns, default=None)
