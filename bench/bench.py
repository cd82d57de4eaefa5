"""`make bench`: the framework against plain PyTorch, measured side by side in one run.

Each round runs, one after the other: the plain tensor loop, the primer-style DataLoader loop and
`python -m src.train` for MNIST, then the plain and framework NAND runs. Rounds alternate so that
machine noise hits all of them alike; the table reports medians (the ratio column: the median of
each round's framework / plain) and writes them to outputs/bench/.

    python bench/bench.py [--repeats 5] [--device cpu|cuda] [--data-dir data]
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "outputs" / "bench"


def measure(cmd: list[str]) -> dict:
    """Run `cmd`; return its wall seconds, peak resident memory (MiB) and its own JSON result."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out, err = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"benchmark command failed: {' '.join(cmd)}\n{out[-2000:]}\n{err[-2000:]}")
    result = {"wall": wall, "rss_mib": usage.ru_maxrss / 1024}
    last = out.strip().splitlines()[-1] if out.strip() else "{}"
    if last.startswith("{"):
        result |= json.loads(last)
    return result


def framework(experiment: str, args, run: int) -> dict:
    run_dir = OUT / "runs" / f"{experiment}-{run}"
    cmd = [
        sys.executable,
        "-m",
        "src.train",
        f"+experiment={experiment}",
        f"hydra.run.dir={run_dir}",
    ]
    if experiment.startswith("mnist"):
        cmd += [f"data.data_dir={args.data_dir}", f"trainer.accelerator={args.accelerator}"]
    result = measure(cmd)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return result | {
        "train_seconds": metrics["train_seconds"],
        "fit_seconds": metrics["fit_seconds"],
        "test_acc": metrics.get("test/acc"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--skip-dataloader", action="store_true", help="skip the slow primer loop")
    args = parser.parse_args()
    args.accelerator = "gpu" if args.device.startswith("cuda") else "cpu"
    plain = [sys.executable, "bench/plain.py"]
    mnist = [*plain, "mnist", f"--data-dir={args.data_dir}", f"--device={args.device}"]

    samples: dict[str, list[dict]] = {}
    for run in range(args.repeats):
        jobs = {
            "plain": lambda: measure(mnist),
            "dataloader": lambda: measure([*mnist, "--loader=dataloader"]),
            "framework": lambda run=run: framework("mnist_sgd", args, run),
            "nand plain": lambda: measure([*plain, "nand"]),
            "nand framework": lambda run=run: framework("nand", args, run),
        }
        if args.skip_dataloader:
            del jobs["dataloader"]
        for name, job in jobs.items():
            samples.setdefault(name, []).append(job())
            print(f"round {run + 1}/{args.repeats}: {name} {samples[name][-1]}", flush=True)

    def median(name, key):
        return statistics.median(s[key] for s in samples[name]) if name in samples else None

    def row(label, key, base, *others, unit="s"):
        values = [median(name, key) for name in (base, *others)]
        cells = ["-" if v is None else f"{v:.1f}" if unit == "MiB" else f"{v:.2f}" for v in values]
        # The ratio of each round's pair, then their median: the machine's speed drifts between
        # rounds, and both programs of a round share its drift.
        pairs = zip(samples[base], samples[others[-1]], strict=True)
        ratio = statistics.median(other[key] / first[key] for first, other in pairs)
        return f"| {label} ({unit}) | " + " | ".join(cells) + f" | {ratio:.2f}× |"

    lines = [
        f"Median of {args.repeats} alternating rounds, {datetime.now():%Y-%m-%d %H:%M}, "
        f"{platform.machine()}, {os.cpu_count()} cores, device {args.device}.",
        "",
        "| MNIST, batch 64, 5 epochs | plain loop | primer DataLoader | framework "
        "| framework / plain |",
        "| --- | --- | --- | --- | --- |",
        row("training phase", "train_seconds", "plain", "dataloader", "framework"),
        row("whole process", "wall", "plain", "dataloader", "framework"),
        row("peak memory", "rss_mib", "plain", "dataloader", "framework", unit="MiB"),
        "",
        "| NAND, 4000 steps | plain loop | framework | framework / plain |",
        "| --- | --- | --- | --- |",
        row("training phase", "train_seconds", "nand plain", "nand framework"),
        row("whole process", "wall", "nand plain", "nand framework"),
    ]
    table = "\n".join(lines)
    print("\n" + table)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "latest.md").write_text(table + "\n")
    (OUT / "samples.json").write_text(json.dumps(samples, indent=2) + "\n")
    print(f"\nwritten to {OUT / 'latest.md'}")


if __name__ == "__main__":
    main()
