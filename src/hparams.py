"""What TensorBoard's HPARAMS tab shows: a run's settings as its values, a row's name, and a sweep's
columns. Nothing here imports Lightning or torch: a sweep's parent process writes the columns at its
end, and `python -m src.sweep` and `python -m src.report` rewrite them."""

import time
from pathlib import Path

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.plugins.hparams import summary_v2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from src.names import FINAL_METRICS


def as_tensorboard_values(settings: dict) -> dict:
    """TensorBoard knows one number type and prints it with decimals (64.000): a count reads
    right as text."""
    return {key: str(value) if isinstance(value, int) and not isinstance(value, bool) else value
            for key, value in settings.items()}  # fmt: skip


def run_name(run_dir) -> str:
    """A row's name in HPARAMS: the run's folder (what TensorBoard's run list shows of a sweep's
    job), then where it lies, below outputs/ or as a whole path; unique, so that no two runs are
    averaged into one row."""
    parent, outputs = Path(run_dir).resolve().parent, Path("outputs").resolve()
    where = parent.relative_to(outputs) if parent.is_relative_to(outputs) else parent
    return f"{Path(run_dir).name} in {where}"


# HPARAMS's table shows the first five settings it lists and every metric, in this order: those
# that judge a run (val/, test/) before those of its training.
FINAL = sorted(FINAL_METRICS, key=lambda name: ("val", "test", "train").index(name.split("/")[0]))
COLUMNS = ".sweep-columns"  # the end of its event file's name


def write_sweep_columns(sweep_dir: Path, jobs: list[dict], metric: str) -> None:
    """HPARAMS's columns for a sweep (an experiment summary in the sweep's folder): the settings
    that tell its jobs apart, then the experiment's `metric`, then the other final metrics.

    TensorBoard takes the first experiment summary it finds for every run it shows: open it on
    the sweep's folder to compare the sweep's jobs."""
    settings = [as_tensorboard_values(job["settings"]) for job in jobs if job.get("settings")]
    if not settings:
        return
    keys = sorted(set().union(*settings), key=lambda k: (not all(k in s for s in settings), k))
    differ = [k for k in keys if len({repr(s.get(k)) for s in settings}) > 1] or keys
    columns = []
    for key in differ:
        values = {s[key] for s in settings if key in s}
        if all(isinstance(v, float) for v in values):
            domain = summary_v2.RealInterval(min(values), max(values))
        elif len({type(v) for v in values}) == 1:  # text, or true/false
            domain = summary_v2.Discrete(values)
        else:
            domain = None
        columns.append(summary_v2.HParam(key, domain))
    metrics = [m for m in (metric, *FINAL) if any(m in job for job in jobs)]
    summary = summary_v2.hparams_config_pb(
        hparams=columns, metrics=[summary_v2.Metric(m) for m in dict.fromkeys(metrics)]
    )
    for old in sweep_dir.glob(f"events.out.tfevents.*{COLUMNS}"):  # from the sweep's earlier end
        old.unlink()
    # TensorBoard's own event writer, the one torch's SummaryWriter wraps (torch takes seconds to
    # import, for one event).
    writer = EventFileWriter(str(sweep_dir), filename_suffix=COLUMNS)
    writer.add_event(Event(wall_time=time.time(), summary=summary))
    writer.close()
