"""Share a run or a sweep without TensorBoard: `python -m src.report <run dir or sweep dir>`.

Writes report.md with PNGs beside it: the loss and accuracy curves and the pictures the run
logged (read back from its TensorBoard event files) and its metrics.json; for a sweep, the
summary table and the curves of every job.
"""

import sys
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from src.console import quiet_console
from src.events import epoch_curve, load_events
from src.names import RECORD
from src.records import read_json, read_overrides, write_png, write_text
from src.sweep import job_colors, job_dirs, ranked_jobs, write_summary

CURVES = {"loss": ("train/loss", "val/loss"), "accuracy": ("train/acc", "val/acc")}


def run_report(run_dir: Path) -> Path:
    """report.md for one run, with curves.png and the run's pictures."""
    events = load_events(run_dir)
    metrics = read_json(run_dir / RECORD) or {}
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for ax, (name, tags) in zip(axes, CURVES.items(), strict=True):
        for tag in tags:
            epochs, values = epoch_curve(events, tag)
            if values:
                ax.plot(epochs, values, marker="o", label=tag)
        ax.set(xlabel="epoch", title=name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    write_png(run_dir / "curves.png", fig)

    lines = [f"# Run `{run_dir.name}`", ""]
    overrides = read_overrides(run_dir)
    if overrides is not None:
        lines += ["```", "python -m src.train " + " ".join(overrides), "```", ""]
    lines += ["| metric | value |", "| --- | --- |"]
    lines += [f"| {key} | {cell(value)} |" for key, value in metrics.items()]
    lines += ["", "![loss and accuracy per epoch](curves.png)", ""]
    for tag in sorted(events.Tags()["images"]):
        images = events.Images(tag)
        # First and last: how the picture changed over training (one when logged once).
        for image in {images[0].step: images[0], images[-1].step: images[-1]}.values():
            name = f"{tag.replace('/', '_')}_step{image.step}.png"
            write_text(run_dir / name, image.encoded_image_string)
            lines += [f"## {tag}, step {image.step}", "", f"![{tag}]({name})", ""]
    report = run_dir / "report.md"
    write_text(report, "\n".join(lines))
    return report


def sweep_report(sweep_dir: Path) -> Path:
    """report.md for a sweep: the summary table, every job's validation and training curves."""
    table = write_summary(sweep_dir)
    fig = Figure(figsize=(11, 5.5))
    ax = fig.subplots()
    jobs, _ = ranked_jobs(sweep_dir)  # in summary.png's order and colours
    for job, color in zip(jobs, job_colors(jobs), strict=True):
        epochs, values = epoch_curve(load_events(job["dir"]), "train/loss")
        if values:
            ax.plot(epochs, values, marker="o", color=color, label=job["label"])
    ax.set(xlabel="epoch", ylabel="train/loss", yscale="log", title="training loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    write_png(sweep_dir / "train_loss.png", fig)
    lines = [f"# Sweep `{sweep_dir.name}`", "", table, ""]
    lines += ["![validation curves of every job](summary.png)", ""]
    lines += ["![training loss of every job](train_loss.png)", ""]
    report = sweep_dir / "report.md"
    write_text(report, "\n".join(lines))
    return report


def cell(value) -> str:
    """A record's value as a person reads it: 4 significant digits, settings as `key: value`."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{key}: {cell(item)}" for key, item in value.items()) or "-"
    if isinstance(value, list):
        return " ".join(f"`{item}`" if isinstance(item, str) else cell(item) for item in value)
    return str(value)


def main(argv: list[str]) -> None:
    quiet_console()
    if len(argv) != 2:
        sys.exit("usage: python -m src.report <run dir or sweep dir>")
    path = Path(argv[1])
    if read_json(path / RECORD) is not None:
        report = run_report(path)
    elif job_dirs(path):
        report = sweep_report(path)
    else:
        sys.exit(f"{path} is neither a run with a readable metrics.json nor a sweep directory")
    print(f"wrote {report}")


if __name__ == "__main__":
    main(sys.argv)
