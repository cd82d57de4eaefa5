"""Checkpoints and the run folders around them: written whole, read as untrusted input.

A checkpoint is read with weights-only loading (tensors and plain values, never code), and the
module it holds weights for is built from its run's config (which it carries); that config may
only build the project's own and PyTorch's classes (or a module the user allows by name), so a
checkpoint or run folder from someone else runs no code of theirs.
"""

import importlib
import io
import logging
import warnings
from pathlib import Path

import torch
from lightning.fabric.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig, ListConfig, OmegaConf

from src.config import check_checkpoint, run_config
from src.errors import InputError
from src.records import write_text


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, but each checkpoint goes to a temporary file beside it and is
    renamed into place: a full disk or a crash mid-write leaves the previous one whole (Lightning
    writes in place), and the error names the file."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO writes local files: it takes no storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_text(Path(path), buffer.getvalue())


TRUSTED = ("src.", "torch.nn.", "torch.optim.")


def read_checkpoint(path: Path) -> dict:
    """The checkpoint at `path`, loaded weights-only; one clear error for anything else."""
    import pickle

    check_checkpoint(path)
    try:
        with warnings.catch_warnings():  # torch's warnings about what it then refuses, below
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only loading met something other than tensors and plain values: never run it.
        lines = str(err).strip().splitlines()
        reason = next((line for line in lines if "WeightsUnpickler error" in line), lines[0])
        raise InputError(
            f"ckpt_path={path} was refused by weights-only loading ({reason.strip()}): it holds "
            "something other than tensors and plain values, which is never run"
        ) from None
    except Exception as err:  # a damaged archive: torch says why in its own words
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"ckpt_path={path} is not a readable checkpoint ({reason})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise InputError(f"ckpt_path={path} is not a Lightning checkpoint (it has no state_dict)")
    return checkpoint


def check_weights_fit(checkpoint: dict, module, path: Path) -> None:
    """Refuse, in one line, a checkpoint of another network (other layers or other sizes)."""
    mine, theirs = module.state_dict(), checkpoint["state_dict"]
    other = sorted(k for k in mine.keys() & theirs.keys() if mine[k].shape != theirs[k].shape)
    unmatched = sorted(mine.keys() ^ theirs.keys())
    if other or unmatched:
        first = other[0] if other else unmatched[0]
        shapes = (f": {tuple(theirs[first].shape)} there, {tuple(mine[first].shape)} here"
                  if other else ", which only one of them has")  # fmt: skip
        raise InputError(
            f"ckpt_path={path} holds the weights of another network ({first}{shapes}): use it "
            "with the settings of the run that wrote it"
        )


def check_targets(node, allow: list[str], path: str) -> None:
    """Refuse any `_target_` under `node` that is not a class of the project, of PyTorch, or of a
    module named in `allow`: building it would run code the run folder chose."""
    if isinstance(node, DictConfig):
        for key, value in node.items_ex(resolve=False):
            name = f"{path}.{key}"
            if key == "_target_":
                check_target(str(value), allow, name)
            else:
                check_targets(value, allow, name)
    elif isinstance(node, ListConfig):
        for i, value in enumerate(node):
            check_targets(value, allow, f"{path}[{i}]")


def check_target(target: str, allow: list[str], key: str) -> None:
    """Refuse a `_target_` that is not a class defined in the project, in PyTorch or in a module of
    `allow`: where it is defined counts, not where it is imported from (`src.loggers.FileWriter`
    is TensorBoard's)."""
    if not trusted(target, allow):
        module = target.rsplit(".", 1)[0]
        raise InputError(
            f"{key}={target} is not one of the project's or PyTorch's classes, so it is not built "
            f"from a run folder: if you trust this run, allow its module with allow=[{module}]"
        )
    module_name, _, name = target.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        raise InputError(f"{key}={target} does not exist here") from None
    if not isinstance(found, type):
        raise InputError(f"{key}={target} is not a class: a run folder may only build classes")
    defined = f"{found.__module__}.{found.__qualname__}"
    if not trusted(defined, allow):
        raise InputError(
            f"{key}={target} is {defined}, defined outside the project and PyTorch, so it is not "
            f"built from a run folder: if you trust this run, allow its module with "
            f"allow=[{found.__module__}]"
        )


def trusted(name: str, allow: list[str]) -> bool:
    """Whether a dotted name lies in the project, PyTorch's layers and optimizers, or `allow`."""
    return name.startswith(TRUSTED) or any(name == a or name.startswith(f"{a}.") for a in allow)


def load_module(ckpt: Path, allow: list[str] = ()) -> tuple["L.LightningModule", DictConfig, dict]:  # noqa: F821
    """(module with the checkpoint's weights, in eval mode; its run's config; the checkpoint).

    The network comes from the run's config (kept in the checkpoint; for an older checkpoint,
    its run's .hydra/config.yaml), after `check_targets`.
    """
    checkpoint = read_checkpoint(ckpt)
    config = checkpoint.get("config")
    run_cfg = OmegaConf.create(config) if isinstance(config, dict) else run_config(ckpt)
    for part in ("model", "data"):
        if part not in run_cfg:
            raise InputError(f"the config of ckpt_path={ckpt} has no {part}: it is not the "
                             "config of a training run")  # fmt: skip
        check_targets(run_cfg[part], list(allow), part)

    from hydra.utils import instantiate

    logging.getLogger("lightning").handlers.clear()  # see src/train.py
    module = instantiate(run_cfg.model)
    check_weights_fit(checkpoint, module, ckpt)
    module.load_state_dict(checkpoint["state_dict"])
    module.eval()
    return module, run_cfg, checkpoint
