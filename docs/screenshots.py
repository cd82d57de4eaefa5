"""Take the README's TensorBoard pictures: a real TensorBoard over a folder of runs, each tab
opened in headless Chromium at 1280×900 (TensorBoard's default sizes).

    python docs/screenshots.py <logdir> [tab ...]     # tabs: scalars custom_scalars images hparams

Writes docs/tensorboard_<tab>.png. Needs Chromium (Debian's package `chromium`).
"""

import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

DOCS = Path(__file__).parent
# No network here but localhost: Chromium's own background connections are switched off.
CHROMIUM = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--window-size=1280,900", "--virtual-time-budget=20000"]  # fmt: skip


def free_port() -> int:
    """A TCP port no one listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(logdir: str, tabs: list[str]) -> None:
    port = free_port()
    tensorboard = Path(sys.executable).with_name("tensorboard")
    server = subprocess.Popen([str(tensorboard), "--logdir", logdir, "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        for _ in range(120):  # until it answers, and has read the event files once
            try:
                urllib.request.urlopen(f"http://localhost:{port}/data/runs", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        time.sleep(5)
        for tab in tabs:
            with tempfile.TemporaryDirectory() as profile:
                out = DOCS / f"tensorboard_{tab}.png"
                subprocess.run([shutil.which("chromium"), *CHROMIUM, f"--user-data-dir={profile}",
                                f"--screenshot={out}", f"http://localhost:{port}/#{tab}"],
                               check=True, capture_output=True)  # fmt: skip
                print(out)
    finally:
        server.terminate()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:] or ["scalars", "custom_scalars", "images", "hparams"])
