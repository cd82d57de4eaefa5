"""What a sweep's job directories are called: the settings that tell each job apart from the
sweep's other jobs (`optimizer.lr=0.5`), so TensorBoard's run list and the sweep's folder show
the difference first. A job's whole identity (every override) is in its record.

The swept settings are known where the sweep starts (its command line and the sweeper's
params); each job's directory is resolved later, maybe in a worker process, from that job's own
overrides. They meet through an environment variable, which workers inherit.
"""

import hashlib
import json
import os
import sys
from pathlib import Path
from urllib.parse import quote

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

SWEPT = "PRIMER_SWEPT_SETTINGS"  # the keys the running sweep varies, as a JSON list


def key(override) -> str:
    """A parsed override's key without its +/~ prefix, as a job's and a sweep's share it."""
    return override.key_or_group + (f"@{override.package}" if override.package else "")


def sweep_settings(config: DictConfig) -> tuple[list[str], list[str]]:
    """(the keys a sweep varies, the overrides every job shares): from its command line and the
    sweeper's params (a preset's grid, an Optuna search space)."""
    parser = OverridesParser.create()
    command_line = parser.parse_overrides(list(config.hydra.overrides.task))
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    grid = parser.parse_overrides([f"{k}={v}" for k, v in params.items()])
    swept = sorted({key(o) for o in (*command_line, *grid) if o.is_sweep_override()})
    shared = sorted(o.input_line for o in command_line if key(o) not in swept)
    return swept, shared


class NameJobs(Callback):
    """Hydra callback: tell the jobs which settings the sweep varies, and refuse a sweep
    directory that holds a sweep of other shared settings (its jobs' names would mean other
    jobs)."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        swept, shared = sweep_settings(config)
        earlier = Path(config.hydra.sweep.dir) / "multirun.yaml"
        if earlier.is_file():
            then = sweep_settings(OmegaConf.create(yaml.safe_load(earlier.read_text())))[1]
            if then != shared:
                print(f"error: hydra.sweep.dir={earlier.parent} holds a sweep of other settings "
                      f"({' '.join(then) or 'none'}, not {' '.join(shared) or 'none'}): give "
                      "another hydra.sweep.dir, or the same settings to continue that sweep",
                      file=sys.stderr)  # fmt: skip
                sys.exit(2)
        os.environ[SWEPT] = json.dumps(swept)


def job_dirname(overrides) -> str:
    """A sweep job's directory name: the settings the sweep varies, as this job has them, sorted,
    so a sweep run again finds each job whatever order its values come in. Outside a sweep that
    says what it varies, all of the job's overrides.

    Characters a file name cannot hold are %-escaped; a long value (a path, say) is cut and ends
    with a hash of the whole, so the settings that differ between jobs stay readable."""
    parsed = OverridesParser.create().parse_overrides([str(o) for o in overrides])
    swept = set(json.loads(os.environ.get(SWEPT, "[]")))
    named = [o for o in parsed if key(o) in swept] or parsed
    parts = []
    for item in sorted(o.input_line for o in named):
        name, _, value = item.partition("=")
        value = quote(value, safe="=,+-._[]{}:@")
        if len(value) > 32:
            value = f"{value[:16]}~{hashlib.sha1(value.encode()).hexdigest()[:8]}"
        parts.append(f"{quote(name, safe='+-._~')}={value}")
    name = ",".join(parts) or "defaults"
    if len(name) > 200:  # most file systems allow 255 bytes
        name = f"{name[:180]}~{hashlib.sha1(name.encode()).hexdigest()[:12]}"
    return name
