"""The comparison at the end of a sweep: summary.csv, summary.md and summary.png in its directory.

Hydra calls `SweepSummary` when a multirun ends (see conf/hydra/default.yaml). The summary is
rebuilt from what every job left on disk, so a sweep run again into the same directory gets one
summary over all of its jobs. `python -m src.sweep <sweep dir>` rebuilds it by hand.
"""

import csv
import json
import logging
import math
import sys
from pathlib import Path

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from src.events import epoch_curve, load_events

log = logging.getLogger(__name__)

COLUMNS = ("val/acc", "test/acc", "train/loss", "fit_seconds", "status")


class SweepSummary(Callback):
    """Hydra callback: summarize the sweep directory once every job has ended."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        table = write_summary(Path(config.hydra.sweep.dir))
        log.info("sweep summary (best first):\n%s", table)


def read_jobs(sweep_dir: Path) -> list[dict]:
    """One entry per job directory: its number, overrides and metrics.json (status 'unfinished'
    when it has none)."""
    jobs = []
    for overrides_file in sweep_dir.glob("*/.hydra/overrides.yaml"):
        job_dir = overrides_file.parent.parent
        metrics_file = job_dir / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        metrics.setdefault("status", "unfinished")
        overrides = yaml.safe_load(overrides_file.read_text()) or []
        jobs.append({"job": job_dir.name, "dir": job_dir, "overrides": overrides, **metrics})
    # What every job shares (the experiment, say) says nothing about the differences.
    shared = set.intersection(*(set(job["overrides"]) for job in jobs)) if jobs else set()
    for job in jobs:
        job["label"] = " ".join(o for o in job["overrides"] if o not in shared) or job["job"]
    return sorted(jobs, key=rank)


def rank(job: dict) -> tuple:
    """Completed jobs first, best validation accuracy (or lowest validation loss) first."""
    acc, loss = job.get("val/acc"), job.get("val/loss")
    score = -acc if acc is not None else loss if loss is not None else math.inf
    return (job["status"] != "completed", score, job["job"])


def write_summary(sweep_dir: Path) -> str:
    """Write summary.csv, summary.md and summary.png; return the Markdown table."""
    jobs = read_jobs(sweep_dir)
    header = ["job", "overrides", *COLUMNS]
    rows = [[job["job"], job["label"], *(job.get(key) for key in COLUMNS)] for job in jobs]
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(["" if v is None else v for v in row] for row in rows)

    def cell(value) -> str:
        if value is None:
            return "-"
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    table = "\n".join(lines)
    (sweep_dir / "summary.md").write_text(table + "\n")
    plot_curves(jobs, sweep_dir / "summary.png")
    return table


def plot_curves(jobs: list[dict], path: Path) -> None:
    """Every job's validation curve on one figure, read back from its TensorBoard events."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 5.5))
    ax = fig.subplots()
    colors = colormaps["tab20"].colors
    tag = "val/acc"
    for i, job in enumerate(jobs):
        events = load_events(job["dir"])
        scalars = events.Tags()["scalars"]
        tag = "val/acc" if "val/acc" in scalars else "val/loss" if "val/loss" in scalars else None
        if tag is None:
            continue
        # One point per validation, i.e. per epoch: epochs compare jobs of any batch size.
        epochs, values = epoch_curve(events, tag)
        ax.plot(epochs, values, marker="o", color=colors[i % len(colors)], label=job["label"])
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(tag or "validation")
    ax.set_title(f"validation curves, {len(jobs)} jobs")
    ax.grid(alpha=0.3)
    if ax.lines:  # best job first, as in the table
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        sys.exit("usage: python -m src.sweep <sweep dir>")
    print(write_summary(Path(sys.argv[1])))
