"""Continuing a run: what a resume may change and what it may not.

A checkpoint's weights fit only the network that made them, and its place in an epoch only the
data; the optimizer's saved state fits only its own kind. Those settings are compared with the
config of the run that wrote the checkpoint (kept in it) and a change is refused. Anything else
(the learning rate, the epochs, the callbacks) may change: it is applied
(src/callbacks/resumed.py), logged and recorded. Nothing here imports Lightning.
"""

import math
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from src.errors import ConfigError

# What the checkpoint holds state for; within them, what only says how (not what) to compute.
FIXED = ("model.", "data.", "optimizer._target_", "scheduler.schedule._target_",
         "scheduler.interval")  # fmt: skip
HOW = ("data.data_dir", "data.download", "data.eval_batch_size")
NOT_SETTINGS = ("ckpt_path",)


def flat(tree, prefix: str = "") -> dict:
    """{"optimizer.lr": 0.01, ...} of a config, interpolations left as written."""
    items = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        items |= flat(value, f"{name}.") if isinstance(value, dict) else {name: value}
    return items


def resume_changes(cfg: DictConfig, then: dict | None, ckpt: Path) -> dict[str, list] | None:
    """The settings this run changes against `then`, the config of the run that wrote `ckpt`
    (kept in the checkpoint), as {key: [then, now]}; None when the checkpoint has none.
    Refuses a change that the checkpoint's state cannot follow."""
    if then is None:
        return None
    before = flat(then)
    now = flat(OmegaConf.to_container(cfg, resolve=False))
    changed = {
        key: [before.get(key), now.get(key)]
        for key in sorted(before.keys() | now.keys())
        if before.get(key) != now.get(key) and key not in NOT_SETTINGS
    }
    fixed = [key for key in changed if key.startswith(FIXED) and not key.startswith(HOW)]
    if fixed:
        listed = ", ".join(f"{key} ({changed[key][0]} → {changed[key][1]})" for key in fixed)
        raise ConfigError(
            f"ckpt_path={ckpt} was trained with other settings, which a resume cannot change: "
            f"{listed}. Resume with the run's own settings, or start a new run."
        )
    # A new learning rate scales the restored ones by now / then (src/callbacks/resumed.py).
    lr = changed.get("optimizer.lr", [1.0])[0]
    number = isinstance(lr, int | float) and not isinstance(lr, bool)
    if not (number and math.isfinite(lr) and lr > 0):
        raise ConfigError(
            f"the config in ckpt_path={ckpt}: optimizer.lr={lr!r} is not a learning rate, so the "
            "rates restored from it cannot be rescaled to this run's: resume from another "
            "checkpoint, or start a new run"
        )
    return changed
