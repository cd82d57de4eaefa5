"""Reading a run's curves and pictures back from its TensorBoard event files."""

import logging
from pathlib import Path


def load_events(run_dir: Path):
    """TensorBoard's own reader over every event file of the run, with all points kept."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # one line per event file otherwise
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def epoch_curve(events, tag: str) -> tuple[list[int], list[float]]:
    """An epoch-level curve (one point per epoch, as train/loss and val/* are): (epochs, values)."""
    values = [e.value for e in events.Scalars(tag)] if tag in events.Tags()["scalars"] else []
    return list(range(1, len(values) + 1)), values
