"""Prints a logic-gate net's output next to the truth table it was trained on."""

import logging

import lightning as L
import torch

log = logging.getLogger(__name__)


class TruthTable(L.Callback):
    """After testing, logs each input pair with its target and the net's output."""

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        x, y = batch
        with torch.no_grad():
            out = pl_module(x)
        lines = ["  x1   x2   target   output   rounded"]
        for (a, b), target, value in zip(
            x.tolist(), y.flatten().tolist(), out.flatten().tolist(), strict=True
        ):
            lines.append(f"{a:4.0f} {b:4.0f} {target:8.0f} {value:8.4f} {round(value):9d}")
        log.info("truth table after training:\n%s", "\n".join(lines))
