"""A sweep under each launcher, side by side: wall time, and how far each job's numbers under the
population launcher are from the same job's under the basic one.

Each round runs the sweep once per launcher, in turn (the order rotates from round to round), into
a fresh sweep directory under outputs/bench/sweeps/; the table reports each launcher's median wall
time and its ratio to the basic launcher's in the same round (median over rounds). Per population
(its members read from the records), the group's time against the sum of its jobs' times under the
basic launcher, each taken from the first to the last line of the job's train.log.

    python bench/sweeps.py +experiment=mnist_sgd +sweep=mnist_optimizers [--rounds 2]
        [--launchers population,population2,basic,joblib] [-- more overrides]

(population2: the population launcher with two worker processes, as joblib's here.)
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "outputs" / "bench" / "sweeps"
LAUNCHERS = {"population": ["hydra/launcher=population"],
             "population2": ["hydra/launcher=population", "hydra.launcher.n_jobs=2"],
             "basic": ["hydra/launcher=basic"],
             "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]}  # fmt: skip


def run(overrides: list[str], launcher: str, sweep_dir: Path) -> float:
    shutil.rmtree(sweep_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "src.train", "-m", *overrides, *LAUNCHERS[launcher],
           f"hydra.sweep.dir={sweep_dir}"]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{launcher} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def records(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/metrics.json")}


def log_span(job_dir: Path) -> tuple[datetime, datetime]:
    stamps = [datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f")
              for line in (job_dir / "train.log").read_text().splitlines()
              if line.startswith("[20")]  # fmt: skip
    return stamps[0], stamps[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="+")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--launchers", default="population,population2,basic,joblib")
    args = parser.parse_args()
    launchers = args.launchers.split(",")
    times = {name: [] for name in launchers}
    ratios = {name: [] for name in launchers}
    for round_ in range(args.rounds):
        order = launchers[round_ % len(launchers) :] + launchers[: round_ % len(launchers)]
        this = {}
        for name in order:
            this[name] = run(args.overrides, name, OUT / name)
            times[name].append(this[name])
            print(f"round {round_ + 1}: {name} {this[name]:.1f} s", flush=True)
        for name in launchers:
            ratios[name].append(this["basic"] / this[name])
    print("\n| launcher | wall (s), median | basic / it, median |\n| --- | --- | --- |")
    for name in launchers:
        print(f"| {name} | {statistics.median(times[name]):.1f} | "
              f"{statistics.median(ratios[name]):.2f}× |")  # fmt: skip
    alone = records(OUT / "basic")
    for launcher in [name for name in launchers if name.startswith("population")]:
        compare(records(OUT / launcher), alone, launcher)
    if "population" in launchers:
        per_population(records(OUT / "population"))


def compare(together: dict[str, dict], alone: dict[str, dict], launcher: str) -> None:
    """The largest differences of a job's test/acc and val/loss between `launcher` and basic."""
    worst = {"test/acc (points)": 0.0, "val/loss": 0.0}
    for name, record in alone.items():
        mine = together[name]
        if record.get("test/acc") is not None and mine.get("test/acc") is not None:
            gap = 100 * abs(mine["test/acc"] - record["test/acc"])
            worst["test/acc (points)"] = max(worst["test/acc (points)"], gap)
        if record.get("val/loss") is not None and mine.get("val/loss") is not None:
            worst["val/loss"] = max(worst["val/loss"], abs(mine["val/loss"] - record["val/loss"]))
    print(f"\nlargest differences {launcher} - basic over {len(alone)} jobs: {worst}")


def per_population(together: dict[str, dict]) -> None:
    """Each population's time (one worker) against its jobs' one by one under basic."""
    groups = {tuple(r["population"]) for r in together.values() if "population" in r}
    print("\n| population (members) | its time (s) | its jobs alone (s) | speed-up |")
    print("| --- | --- | --- | --- |")
    for members in sorted(groups):
        spans = [log_span(OUT / "population" / m) for m in members]
        group = (max(e for _, e in spans) - min(s for s, _ in spans)).total_seconds()
        single = sum(
            (e - s).total_seconds() for s, e in map(log_span, (OUT / "basic" / m for m in members))
        )
        print(f"| {', '.join(members)} | {group:.1f} | {single:.1f} | {single / group:.2f}× |")


if __name__ == "__main__":
    main()
