"""How long a learning-rate schedule runs, for the module that trains with it and for the config
check that builds it once before a run (src/config.py)."""

import functools
import inspect

RUN_LENGTH = ("T_max", "total_steps")  # the arguments that give a schedule's length


def run_length(schedule: functools.partial, total: int) -> dict[str, int]:
    """A schedule that runs over the whole run (CosineAnnealingLR's T_max, OneCycleLR's
    total_steps) and is not given its length gets `total`: the run's steps or epochs."""
    wanted = inspect.signature(schedule.func).parameters
    return {
        name: total for name in RUN_LENGTH if name in wanted and schedule.keywords.get(name) is None
    }
