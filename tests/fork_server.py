"""A test's `python -m src.<command>` that starts in milliseconds, not seconds.

Most of a test's training process is its start: importing Lightning, PyTorch, torchvision and
their imports takes 6-9 s here, and the suite starts a few hundred of them. A server (one per
pytest worker, tests/conftest.py) imports those libraries once and forks a copy of itself for
each command; the copy takes on the command's working directory, environment, standard streams
and arguments, and runs the module as `python -m` would, from the project's own files, which the
server has not imported.

A test starts `[*PYTHON, "-m", "src.train", ...]` with subprocess as it would start the real
interpreter. PYTHON is this file run as a client, a process that stands in for the interpreter:
it hands its streams, resource limits and ignored signals (a subprocess's preexec_fn) to the
server, passes on the signals it gets (the SIGKILL it cannot catch closes its connection, and the
run is killed), and ends with the run's exit status or signal.
Without a server, or for anything but `-m`, the client becomes the real interpreter (exec).
"""

import json
import os
import resource
import select
import signal
import socket
import struct
import sys

ADDRESS = "TESTS_FORK_SERVER"  # the environment variable naming the server's socket
# What the project's commands import, and most of the start's time.
PRELOAD = ("torch", "torchvision", "torchvision.datasets", "lightning", "lightning.pytorch",
           "torchmetrics", "hydra", "hydra.utils", "omegaconf", "tensorboard",
           "torch.utils.tensorboard", "matplotlib.pyplot", "numpy")  # fmt: skip
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2)  # fmt: skip


def send(sock: socket.socket, value: object) -> None:
    data = json.dumps(value).encode()
    sock.sendall(struct.pack(">I", len(data)) + data)


def receive(sock: socket.socket) -> object:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    return json.loads(exactly(struct.unpack(">I", exactly(4))[0]))


def client(args: list[str]) -> None:
    address = os.environ.get(ADDRESS)
    if not address or len(args) < 2 or args[0] != "-m":
        os.execv(sys.executable, [sys.executable, *args])
    # A signal that comes before the run's pid is known is passed on once it is.
    started, pending = [], []

    def pass_on(sig: int, frame: object) -> None:
        if started:
            os.kill(started[0], sig)
        else:
            pending.append(sig)

    ignored = [sig for sig in signal.valid_signals() if signal.getsignal(sig) == signal.SIG_IGN]
    given = {sig: signal.signal(sig, pass_on) for sig in FORWARDED}
    env = {key: value for key, value in os.environ.items() if key != ADDRESS}
    limits = {name: resource.getrlimit(getattr(resource, name)) for name in dir(resource)
              if name.startswith("RLIMIT_")}  # fmt: skip
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.connect(address)
        socket.send_fds(sock, [b"."], [0, 1, 2])
        send(sock, {"args": args, "cwd": os.getcwd(), "env": env, "limits": limits,
                    "ignored": ignored})  # fmt: skip
        started.append(receive(sock))
    except (OSError, EOFError):  # no server, or none that started the run
        for sig, handler in given.items():
            signal.signal(sig, handler)
        for sig in pending:  # as the interpreter would have taken it
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
        os.execv(sys.executable, [sys.executable, *args])
    for sig in pending:
        os.kill(started[0], sig)
    status = receive(sock)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status))


def serve(address: str) -> None:
    import gc
    import importlib
    import logging

    # The commands import these once Hydra has set up logging, and Lightning's loggers keep
    # to themselves (a console handler, propagate=False) when imported before any handler is.
    standing_in = logging.NullHandler()
    logging.getLogger().addHandler(standing_in)
    for name in PRELOAD:
        importlib.import_module(name)
    logging.getLogger().removeHandler(standing_in)
    # What is imported now lives as long as any command's process: kept out of the collector's
    # passes, which would otherwise touch, and so copy, every page of it in each fork.
    gc.collect()
    gc.freeze()
    own = {os.path.dirname(os.path.abspath(__file__)), *os.environ.get("PYTHONPATH", "").split(":")}
    base_path = [entry for entry in sys.path if entry not in own]
    parent = os.getppid()
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(address + ".new")
    os.rename(address + ".new", address)  # clients find it only once it listens
    listener.listen(64)
    listener.settimeout(1.0)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the supervisors are reaped by the system
    while os.getppid() == parent:  # the pytest worker that started it still runs
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        conn.settimeout(10.0)  # a client killed as it connects holds up no other
        try:
            _, fds, _, _ = socket.recv_fds(conn, 1, 3)
            request = receive(conn)
        except (OSError, EOFError, ValueError):
            conn.close()
            continue
        conn.settimeout(None)
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() == 0:
            listener.close()
            supervise(conn, fds, request, base_path)  # never returns
        conn.close()
        for fd in fds:
            os.close(fd)


def supervise(conn: socket.socket, fds: list[int], request: dict, base_path: list[str]) -> None:
    """In a fork of the server: fork the run, tell the client its pid, then its exit status; if
    the client dies first (a SIGKILL), kill the run too."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    pid = os.fork()
    if pid == 0:
        conn.close()
        run(fds, request, base_path)  # never returns
    for fd in fds:
        os.close(fd)
    send(conn, pid)
    done = os.pidfd_open(pid)
    while True:
        readable, _, _ = select.select([conn, done], [], [])
        if done in readable:
            break
        if not conn.recv(1):  # the client is gone
            os.kill(pid, signal.SIGKILL)
            conn.close()
            conn = None
            break
    _, status = os.waitpid(pid, 0)
    if conn is not None:
        send(conn, status)
    os._exit(0)


def run(fds: list[int], request: dict, base_path: list[str]) -> None:
    """Become `python -m <module> <args>` as the client was started: streams, directory,
    environment, sys.path, then run the module as __main__; exceptions and exit statuses end this
    process as they would end the interpreter."""
    import runpy

    import numpy as np

    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    extra = [entry for entry in os.environ.get("PYTHONPATH", "").split(":") if entry]
    sys.path[:] = [os.getcwd(), *extra, *base_path]
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for sig in request["ignored"]:
        signal.signal(sig, signal.SIG_IGN)
    for name, limit in request["limits"].items():
        resource.setrlimit(getattr(resource, name), tuple(limit))
    np.random.seed()  # as a fresh interpreter seeds it; Python's own `random` reseeds at fork
    module, *args = request["args"][1:]
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    raise SystemExit(0)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2])
    else:
        client(sys.argv[1:])
