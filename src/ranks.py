"""The ranks of one distributed run agree on what they run: its directory and its settings.

Under DDP every rank is a process that runs a command line of this project, and Hydra composes
each one's config anew. Two launchers start them:

- torchrun starts every rank with the user's command line: each would name its run directory by
  the second it started and a random id. All take it from torchrun's run id instead.
- Lightning starts the other ranks of a run by running its first rank's command line again. For
  a sweep's job that command line is the whole sweep's (`-m optimizer.lr=0.1,0.01`, an Optuna
  search): each rank would run the sweep itself, or draw its own trial. The job's first rank
  hands its ranks the command line of that job alone, through the environment they inherit.

Either way rank 0 alone writes `.hydra/` and `train.log`; the others their own
`train_ddp_process_<rank>.log` in the same directory, as Lightning arranges for a single run.
Nothing here imports torch before it is needed.
"""

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

JOB = "PRIMER_SWEEP_JOB"  # the command line of the sweep's job whose ranks Lightning starts
# A job's own command line keeps what composes it, not what made the sweep or names its folders.
SWEEP_ONLY = ("hydra.mode", "hydra.sweep", "hydra/launcher", "hydra.launcher", "hydra/sweeper",
              "hydra.sweeper", "hydra.run", "hydra.job.name", "hydra.output_subdir")  # fmt: skip


def rank_overrides(args: list[str]) -> tuple[list[str], str | None]:
    """The command line this rank runs, when a launcher started it, or a refusal; else `args`."""
    job = os.environ.get(JOB)
    local_rank = os.environ.get("LOCAL_RANK", "0")
    if job is not None and local_rank != "0" and "TORCHELASTIC_RUN_ID" not in os.environ:
        return [*json.loads(job), f"hydra.job.name=train_ddp_process_{local_rank}",
                "hydra.output_subdir=null"], None  # fmt: skip
    return torchrun_overrides(args)


def torchrun_overrides(args: list[str]) -> tuple[list[str], str | None]:
    """Under torchrun: `args` with the run directory named by torchrun's run id (which every rank
    of the run shares: `--standalone` draws a new one; several nodes share the `--rdzv-id` given
    to each), unless `hydra.run.dir` is given; or a refusal."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")  # what torch.distributed checks for torchrun
    if run_id is None:
        return args, None
    sweep = [a for a in args if a in ("-m", "--multirun") or a.startswith("+sweep=")
             or a.startswith("hparams_search=") and a != "hparams_search=null"]  # fmt: skip
    if sweep:
        return args, (f"{sweep[0]}: torchrun starts one training run, and every rank would run "
                      "the sweep itself; run the sweep without torchrun, with trainer=ddp_cpu (or "
                      "ddp), and Lightning starts each job's ranks")  # fmt: skip
    extra = []
    if not any(a.startswith("hydra.run.dir=") for a in args):
        if run_id == "none":  # torchrun's default id, the same for every run
            return args, ("torchrun without --standalone needs --rdzv-id=<id>, the same on every "
                          "node and new for each run (its run directory is "
                          "outputs/runs/torchrun/<name>_<id>), or hydra.run.dir=<dir>")  # fmt: skip
        extra.append(f"hydra.run.dir=outputs/runs/torchrun/${{name}}_{run_id}")
    rank = os.environ.get("RANK", "0")
    if rank != "0":
        extra += [f"hydra.job.name=train_ddp_process_{rank}", "hydra.output_subdir=null"]
    return [*args, *extra], None


def in_sweep_job() -> bool:
    """Whether this process is a rank that Lightning started for a sweep's job (not its first)."""
    return JOB in os.environ and os.environ.get("LOCAL_RANK", "0") != "0"


@contextmanager
def sweep_job(run_dir: Path, ckpt_path: str | None) -> Iterator[None]:
    """Run a sweep's job in this process as the first rank of whatever ranks it starts.

    Its ranks get the job's own command line: its settings as the sweeper chose them, its
    directory, the checkpoint it continues from. Afterwards the process is as the sweep left it
    for the next job: the environment Lightning set for this job's ranks (which would make the
    next job's Trainer take itself for one of them) and the process group are gone.
    """
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    flags = [a for a in sys.argv[1:] if ("=" not in a or a.startswith("-"))
             and a not in ("-m", "--multirun")]  # fmt: skip
    task = [o for o in hydra_cfg.overrides.task if not o.startswith("ckpt_path=")]
    hydra = [o for o in hydra_cfg.overrides.hydra if not o.startswith(SWEEP_ONLY)]
    job = [*flags, *task, *hydra, "hydra.mode=RUN", f'hydra.run.dir="{run_dir}"']
    if ckpt_path:
        job.append(f'ckpt_path="{ckpt_path}"')
    before = dict(os.environ)
    os.environ[JOB] = json.dumps(job)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(before)
        if "torch" in sys.modules:  # else no job got as far as training
            import torch.distributed

            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
