"""A trained module back from its checkpoint: built from its run's own config, weights only."""

import logging
import pickle
from pathlib import Path

from omegaconf import DictConfig

from src.config import check_checkpoint, run_config
from src.errors import InputError


def load_module(ckpt: Path) -> tuple["L.LightningModule", DictConfig, dict]:  # noqa: F821
    """(module with the checkpoint's weights, in eval mode; its run's config; the checkpoint).

    The network comes from the run's .hydra/config.yaml (`model`); the checkpoint itself is read
    with weights-only loading, which refuses anything but tensors and plain values.
    """
    check_checkpoint(ckpt)
    run_cfg = run_config(ckpt)

    import torch
    from hydra.utils import instantiate

    logging.getLogger("lightning").handlers.clear()  # see src/train.py
    try:
        checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[0]
        raise InputError(
            f"ckpt_path={ckpt} was refused by weights-only loading: {reason}"
        ) from None
    module = instantiate(run_cfg.model)
    module.load_state_dict(checkpoint["state_dict"])
    module.eval()
    return module, run_cfg, checkpoint
