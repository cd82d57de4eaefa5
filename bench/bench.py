"""`make bench`: the framework against plain PyTorch, measured side by side in one run.

Each round runs, one after the other: the plain tensor loop on one thread and on PyTorch's
default (one per core), the primer-style DataLoader loop, and `python -m src.train` with its
default `threads` and with `threads=null` (PyTorch's default) for MNIST, then the same plain and
framework runs for NAND. Rounds alternate so that machine noise hits all of them alike; the table
reports medians, and each ratio column the median of each round's framework / plain, against the
faster of that round's two plain loops. It is written to outputs/bench/.

    python bench/bench.py [--repeats 5] [--device cpu|cuda] [--data-dir data]
"""

import argparse
import json
import os
import platform
import shutil
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


def framework(experiment: str, args, run: int, *overrides: str) -> dict:
    variant = "".join(f"-{o.replace('=', '_')}" for o in overrides)
    run_dir = OUT / "runs" / f"{experiment}-{run}{variant}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a run directory holds one run (src/resume.py)
    cmd = [
        sys.executable,
        "-m",
        "src.train",
        f"+experiment={experiment}",
        f"hydra.run.dir={run_dir}",
        *overrides,
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
    all_cores = "threads=null"
    for run in range(args.repeats):
        jobs = {
            "plain": lambda: measure([*mnist, "--threads=1"]),
            "plain, all cores": lambda: measure(mnist),
            "dataloader": lambda: measure([*mnist, "--loader=dataloader"]),
            "framework": lambda run=run: framework("mnist_sgd", args, run),
            "framework, all cores": lambda run=run: framework("mnist_sgd", args, run, all_cores),
            "nand plain": lambda: measure([*plain, "nand", "--threads=1"]),
            "nand plain, all cores": lambda: measure([*plain, "nand"]),
            "nand framework": lambda run=run: framework("nand", args, run),
            "nand framework, all cores": lambda run=run: framework("nand", args, run, all_cores),
        }
        if args.skip_dataloader:
            del jobs["dataloader"]
        for name, job in jobs.items():
            samples.setdefault(name, []).append(job())
            print(f"round {run + 1}/{args.repeats}: {name} {samples[name][-1]}", flush=True)

    def median(name, key):
        return statistics.median(s[key] for s in samples[name]) if name in samples else None

    def ratio(key, plain, other):
        # Each round's ratio to the faster of its two plain loops, then their median: the
        # machine's speed drifts between rounds, and the programs of a round share its drift.
        rounds = zip(samples[plain], samples[f"{plain}, all cores"], samples[other], strict=True)
        return statistics.median(o[key] / min(a[key], b[key]) for a, b, o in rounds)

    def row(label, key, names, plain, unit="s"):
        values = [median(name, key) for name in names]
        cells = ["-" if v is None else f"{v:.1f}" if unit == "MiB" else f"{v:.2f}" for v in values]
        frameworks = [name for name in names if "framework" in name]
        cells += [f"{ratio(key, plain, name):.2f}×" for name in frameworks]
        return f"| {label} ({unit}) | " + " | ".join(cells) + " |"

    mnist_runs = ["plain", "plain, all cores", "dataloader", "framework", "framework, all cores"]
    gate_runs = ["nand plain", "nand plain, all cores", "nand framework",
                 "nand framework, all cores"]  # fmt: skip
    lines = [
        f"Median of {args.repeats} alternating rounds, {datetime.now():%Y-%m-%d %H:%M}, "
        f"{platform.machine()}, {os.cpu_count()} cores, device {args.device}. One thread: "
        "`--threads=1` for the plain loop, the framework's default `threads=1`; all cores: "
        "PyTorch's default (`threads=null`). Ratios: against the faster plain loop of each round.",
        "",
        "| MNIST, batch 64, 5 epochs | plain loop, 1 thread | plain loop, all cores "
        "| primer DataLoader | framework, 1 thread | framework, all cores "
        "| framework / plain | framework, all cores / plain |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        row("training phase", "train_seconds", mnist_runs, "plain"),
        row("whole process", "wall", mnist_runs, "plain"),
        row("peak memory", "rss_mib", mnist_runs, "plain", unit="MiB"),
        "",
        "| NAND, 4000 steps | plain loop, 1 thread | plain loop, all cores | framework, 1 thread "
        "| framework, all cores | framework / plain | framework, all cores / plain |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        row("training phase", "train_seconds", gate_runs, "nand plain"),
        row("whole process", "wall", gate_runs, "nand plain"),
    ]
    table = "\n".join(lines)
    print("\n" + table)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "latest.md").write_text(table + "\n")
    (OUT / "samples.json").write_text(json.dumps(samples, indent=2) + "\n")
    print(f"\nwritten to {OUT / 'latest.md'}")


if __name__ == "__main__":
    main()
