"""The comparison at the end of a sweep: summary.csv, summary.md and summary.png in its directory,
and the columns of TensorBoard's HPARAMS for it.

Hydra calls `SweepSummary` when a multirun ends (see conf/hydra/default.yaml). The summary is
rebuilt from what every job left on disk, so a sweep run again into the same directory gets one
summary over all of its jobs. `python -m src.sweep <sweep dir>` rebuilds it by hand.
"""

import csv
import fcntl
import io
import logging
import math
import os
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from src import sigterm
from src.events import epoch_curve, load_events
from src.names import RECORD
from src.records import read_json, read_overrides, write_png, write_text

log = logging.getLogger(__name__)

COLUMNS = ("val/loss", "val/acc", "test/acc", "train/loss", "parameters", "epoch_seconds",
           "fit_seconds", "status")  # fmt: skip


class SweepSummary(Callback):
    """Hydra callback: summarize the sweep directory once every job has ended.

    A sweep sent SIGTERM stops as one run does: the running jobs (in this process, or in the
    workers of a parallel launcher, which the signal is passed on to) are recorded `interrupted`
    with a checkpoint, no further job starts, the summary is written and the sweep exits with
    status 143; the same command with the same hydra.sweep.dir continues it.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        sigterm.listen(forward=True)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if job_dirs(sweep_dir):  # else no job started: nothing to compare
            # Sweeps sharing the directory (Optuna workers of one study) summarize it one at a
            # time, under an OS lock on it: the last reads every job as it ended.
            directory = os.open(sweep_dir, os.O_RDONLY)
            try:
                fcntl.flock(directory, fcntl.LOCK_EX)
                table = write_summary(sweep_dir, config.monitor.metric, config.monitor.mode)
            finally:
                os.close(directory)
            log.info("sweep summary (best first):\n%s", table)
        if sigterm.received():
            log.warning("the sweep was stopped by SIGTERM: the same command with "
                        "hydra.sweep.dir=%s continues it", sweep_dir)  # fmt: skip
            sys.exit(sigterm.EXIT_STATUS)


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job directories of a sweep: those Hydra wrote a job's overrides into."""
    return sorted(p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml"))


def read_jobs(sweep_dir: Path) -> list[dict]:
    """One entry per job directory: its overrides and its metrics.json; a job whose record is
    missing, empty or corrupt is `unfinished` (a sweep run again trains it again)."""
    jobs = []
    for job_dir in job_dirs(sweep_dir):
        record = read_json(job_dir / RECORD) or {"status": "unfinished"}
        overrides = read_overrides(job_dir)
        overrides = [job_dir.name] if overrides is None else overrides
        if record.get("train_seconds") and record.get("epochs"):
            record["epoch_seconds"] = round(record["train_seconds"] / record["epochs"], 2)
        jobs.append({"job": job_dir.name, "dir": job_dir, "overrides": overrides, **record})
    # What every job shares (the experiment, say) says nothing about the differences.
    shared = set.intersection(*(set(job["overrides"]) for job in jobs)) if jobs else set()
    for job in jobs:
        job["label"] = " ".join(o for o in job["overrides"] if o not in shared) or job["job"]
    return jobs


def rank(jobs: list[dict], metric: str, mode: str) -> list[dict]:
    """Completed jobs first, best `metric` first (highest for mode max, lowest for min)."""

    def key(job: dict) -> tuple:
        value = job.get(metric)
        score = math.inf if value is None else -value if mode == "max" else value
        return (job.get("status") != "completed", score, job["job"])

    return sorted(jobs, key=key)


def ranked_jobs(sweep_dir: Path, metric: str | None = None, mode: str | None = None):
    """(the jobs best first, the metric they are ranked by): the experiment's `metric`, read
    from the jobs' records when not given."""
    jobs = read_jobs(sweep_dir)
    if metric is None:
        monitor = next((job["monitor"] for job in jobs if "monitor" in job), {})
        metric, mode = monitor.get("metric", "val/acc"), monitor.get("mode", "max")
    return rank(jobs, metric, mode), metric


def job_colors(jobs: list[dict]) -> list:
    """A colour per job, by its place in the ranking: every figure of a sweep draws a job alike."""
    from matplotlib import colormaps

    colors = colormaps["tab10" if len(jobs) <= 10 else "tab20"].colors
    return [colors[i % len(colors)] for i in range(len(jobs))]


def write_summary(sweep_dir: Path, metric: str | None = None, mode: str | None = None) -> str:
    """Write summary.csv, summary.md and summary.png, ranked by the experiment's `metric`
    (read from the jobs' records when not given); return the Markdown table."""
    jobs, metric = ranked_jobs(sweep_dir, metric, mode)
    columns = (metric, *(c for c in COLUMNS if c != metric))
    header = ["overrides", *columns, "job"]
    rows = [[job["label"], *(job.get(key) for key in columns), job["job"]] for job in jobs]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(["" if v is None else v for v in row] for row in rows)
    write_text(sweep_dir / "summary.csv", buffer.getvalue())

    def cell(value) -> str:
        if value is None:
            return "-"
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header[:-1]) + " |", "|" + " --- |" * (len(header) - 1)]
    lines += ["| " + " | ".join(cell(v) for v in row[:-1]) + " |" for row in rows]
    table = "\n".join(lines)
    write_text(sweep_dir / "summary.md", table + "\n")
    plot_curves(jobs, metric, sweep_dir / "summary.png")
    from src.hparams import write_sweep_columns  # TensorBoard's protobufs: imported only now

    write_sweep_columns(sweep_dir, jobs, metric)
    return table


def plot_curves(jobs: list[dict], metric: str, path: Path) -> None:
    """Every job's curve of the experiment's metric on one figure (its training counterpart
    dashed in the same colour: the gap between them is overfitting), from its TensorBoard events;
    beside it, when the jobs differ in one number only, the final metric against that number."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    setting = varied_number(jobs)
    train = metric.replace("val/", "train/", 1) if metric.startswith("val/") else None
    # One point per validation, i.e. per epoch: epochs compare jobs of any batch size.
    curves = [{tag: epoch_curve(events, tag) for tag in (metric, train) if tag}
              for events in (load_events(job["dir"]) for job in jobs)]  # fmt: skip
    # One-epoch jobs have no curve to draw: their final values against the setting say it all.
    per_epoch = not setting or any(len(c[metric][1]) > 1 for c in curves)
    panels = [per_epoch, bool(setting)]
    fig = Figure(figsize=(16, 5.5) if all(panels) else (11, 5.5))
    axes = list(fig.subplots(1, 2, width_ratios=(3, 2))) if all(panels) else [fig.subplots()]
    if per_epoch:
        ax = axes.pop(0)
        for job, curve, color in zip(jobs, curves, job_colors(jobs), strict=True):
            if curve[metric][1]:
                ax.plot(*curve[metric], marker="o", color=color, label=job["label"])
            if train:
                ax.plot(*curve[train], linestyle="--", color=color, alpha=0.8)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        dashed = f"; dashed: {train}" if train else ""
        ax.set_title(f"{metric} per epoch, {len(jobs)} jobs (best first){dashed}")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small", loc="best")
    if setting:
        plot_against(axes[0], jobs, metric, setting)
    fig.tight_layout()
    write_png(path, fig)


def varied_number(jobs: list[dict]) -> str | None:
    """The one override key whose numeric value tells the jobs apart, if there is exactly one."""
    values: dict[str, set] = {}
    for job in jobs:
        for override in job["overrides"]:
            key, _, value = override.partition("=")
            values.setdefault(key, set()).add(value)
    varied = [key for key, seen in values.items() if len(seen) > 1]
    if len(varied) != 1 or len(jobs) < 3:
        return None
    try:
        [setting_value(job, varied[0]) for job in jobs]
    except ValueError:
        return None
    return varied[0]


def setting_value(job: dict, key: str) -> float:
    """The job's value of the override `key`, as a number (ValueError when it is not one)."""
    return next(float(o.partition("=")[2]) for o in job["overrides"] if o.startswith(f"{key}="))


def plot_against(ax, jobs: list[dict], metric: str, setting: str) -> None:
    """The final `metric` of each job against its `setting`, jobs gone wrong marked in red: with
    a ring where the loss ended above the job's first loss (the network got worse than
    untrained), with a × at the top edge where there is no value (diverged or failed)."""
    done = sorted((setting_value(j, setting), j[metric]) for j in jobs if j.get(metric) is not None)
    if done:
        ax.plot(*zip(*done, strict=True), marker="o", color="tab:blue", label=f"final {metric}")
    worse = [(setting_value(j, setting), j[metric]) for j in jobs if metric.endswith("loss")
             and j.get(metric) is not None and j.get("first_loss") is not None
             and j[metric] > j["first_loss"]]  # fmt: skip
    if worse:
        ax.scatter(*zip(*worse, strict=True), s=160, facecolors="none", edgecolors="tab:red",
                   linewidths=2, zorder=3,
                   label="worse than untrained: ended above its first loss")  # fmt: skip
    lost = sorted(setting_value(j, setting) for j in jobs if j.get(metric) is None)
    if lost:
        ax.scatter(lost, [1.0] * len(lost), marker="x", s=80, color="tab:red", zorder=3,
                   transform=ax.get_xaxis_transform(), clip_on=False,
                   label="diverged or failed: no value")  # fmt: skip
    numbers = [setting_value(j, setting) for j in jobs]
    if min(numbers) > 0 and max(numbers) / min(numbers) >= 100:
        ax.set_xscale("log")
    ax.set(xlabel=setting, ylabel=metric, title=f"final {metric} against {setting}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small", loc="best")


def main(argv: list[str]) -> None:
    from src.console import quiet_console

    quiet_console()
    if len(argv) != 2:
        sys.exit("usage: python -m src.sweep <sweep dir>")
    sweep_dir = Path(argv[1])
    if not job_dirs(sweep_dir):
        sys.exit(f"{sweep_dir} holds no sweep jobs (no */.hydra/overrides.yaml): nothing to sum up")
    print(write_summary(sweep_dir))


if __name__ == "__main__":
    main(sys.argv)
