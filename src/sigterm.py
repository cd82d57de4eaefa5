"""A SIGTERM remembered for the rest of the process, so that a stop asked for at any moment ends
what it should: a run between its fit and its test, a sweep between two jobs, the workers of a
parallel sweep. A job that submitit started takes submitit's warning of its time limit for one.

Lightning handles SIGTERM itself only while it fits or tests; it runs the handler it found
installed as well, so the one installed here hears every SIGTERM of the process.
"""

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

EXIT_STATUS = 128 + signal.SIGTERM  # what a shell reports for a process SIGTERM ended

_listening = False
_received = False


def listen(forward: bool = False) -> None:
    """From now on, a SIGTERM to this process is noted (`received()`), not fatal; a handler
    installed before (a launcher's) still runs. With `forward`, it is passed on to the worker
    processes of a parallel sweep that listen too. Once per process; later calls do nothing."""
    global _listening
    if _listening:
        return
    _listening = True
    before = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame) -> None:
        global _received
        _received = True
        if forward:
            stop_workers()
        if callable(before):
            before(signum, frame)

    signal.signal(signal.SIGTERM, handler)
    if os.environ.get("SUBMITIT_EXECUTOR"):  # a job that submitit started, on SLURM or locally
        # submitit warns a job of its time limit or a preemption with this signal, and its own
        # handler would requeue the job or end it at once, at whatever line it was. Here it is a
        # SIGTERM instead: the job saves the moment, is recorded interrupted, and a sweep run
        # again continues it.
        preempt = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))
        signal.signal(preempt, lambda signum, frame: os.kill(os.getpid(), signal.SIGTERM))


def received() -> bool:
    """Whether this process has been sent SIGTERM since it started listening."""
    return _received


def stop_workers() -> None:
    """Send SIGTERM to this process's worker processes, each as soon as it listens for it.

    A worker that does not listen yet would die of the signal, and joblib would take that for a
    crash of the whole sweep. So the workers that listen get it now; the others (still starting,
    or idle) are watched from a thread and get it the moment they start listening, which a job
    does first of all: no job trains through a sweep's stop.
    """
    workers = multiprocessing.active_children()
    if workers:
        threading.Thread(target=send_when_listening, args=(workers,), daemon=True).start()


def send_when_listening(workers: list) -> None:
    waiting = [worker.pid for worker in workers]
    while waiting:
        for pid in [pid for pid in waiting if listens(pid)]:
            with contextlib.suppress(ProcessLookupError):  # it has ended
                os.kill(pid, signal.SIGTERM)
            waiting.remove(pid)
        time.sleep(0.05)


def listens(pid: int) -> bool:
    """Whether process `pid` handles SIGTERM (Linux says so in /proc; elsewhere, or once it has
    ended, assume so)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
