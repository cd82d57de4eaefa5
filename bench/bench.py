"""`make bench`: the framework against plain PyTorch, measured side by side in one run.

Each round runs, one after the other: the plain tensor loop, the primer-style DataLoader loop,
`python -m src.train` (several optimizer steps per training_step call, the default) and the same
with `model.steps_per_call=1` (Lightning's one step per call) for MNIST, then the plain and both
framework NAND runs. Rounds alternate so that machine noise hits all of them alike; the table
reports medians (the ratio columns: the median of each round's framework / plain) and writes
them to outputs/bench/.

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
    run_dir = OUT / "runs" / f"{experiment}-{run}{'-single' if overrides else ''}"
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
    single = "model.steps_per_call=1"
    for run in range(args.repeats):
        jobs = {
            "plain": lambda: measure(mnist),
            "dataloader": lambda: measure([*mnist, "--loader=dataloader"]),
            "framework": lambda run=run: framework("mnist_sgd", args, run),
            "single": lambda run=run: framework("mnist_sgd", args, run, single),
            "nand plain": lambda: measure([*plain, "nand"]),
            "nand framework": lambda run=run: framework("nand", args, run),
            "nand single": lambda run=run: framework("nand", args, run, single),
        }
        if args.skip_dataloader:
            del jobs["dataloader"]
        for name, job in jobs.items():
            samples.setdefault(name, []).append(job())
            print(f"round {run + 1}/{args.repeats}: {name} {samples[name][-1]}", flush=True)

    def median(name, key):
        return statistics.median(s[key] for s in samples[name]) if name in samples else None

    def ratio(key, base, other):
        # The ratio of each round's pair, then their median: the machine's speed drifts between
        # rounds, and both programs of a round share its drift.
        pairs = zip(samples[base], samples[other], strict=True)
        return statistics.median(o[key] / b[key] for b, o in pairs)

    def row(label, key, names, ratios, unit="s"):
        values = [median(name, key) for name in names]
        cells = ["-" if v is None else f"{v:.1f}" if unit == "MiB" else f"{v:.2f}" for v in values]
        cells += [f"{ratio(key, names[0], other):.2f}×" for other in ratios]
        return f"| {label} ({unit}) | " + " | ".join(cells) + " |"

    mnist_runs = ["plain", "dataloader", "framework", "single"]
    gate_runs = ["nand plain", "nand framework", "nand single"]
    lines = [
        f"Median of {args.repeats} alternating rounds, {datetime.now():%Y-%m-%d %H:%M}, "
        f"{platform.machine()}, {os.cpu_count()} cores, device {args.device}. Framework: the "
        "default (grouped steps); one step per call: `model.steps_per_call=1`.",
        "",
        "| MNIST, batch 64, 5 epochs | plain loop | primer DataLoader | framework "
        "| framework, one step per call | framework / plain | one step per call / plain |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        row("training phase", "train_seconds", mnist_runs, ["framework", "single"]),
        row("whole process", "wall", mnist_runs, ["framework", "single"]),
        row("peak memory", "rss_mib", mnist_runs, ["framework", "single"], unit="MiB"),
        "",
        "| NAND, 4000 steps | plain loop | framework | framework, one step per call "
        "| framework / plain | one step per call / plain |",
        "| --- | --- | --- | --- | --- | --- |",
        row("training phase", "train_seconds", gate_runs, ["nand framework", "nand single"]),
        row("whole process", "wall", gate_runs, ["nand framework", "nand single"]),
    ]
    table = "\n".join(lines)
    print("\n" + table)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "latest.md").write_text(table + "\n")
    (OUT / "samples.json").write_text(json.dumps(samples, indent=2) + "\n")
    print(f"\nwritten to {OUT / 'latest.md'}")


if __name__ == "__main__":
    main()
