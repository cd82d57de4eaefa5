"""The run's config, kept in each of its checkpoints."""

import lightning as L


class ConfigInCheckpoints(L.Callback):
    """Writes the composed config (plain values, as Hydra composed it) into every checkpoint, so
    a checkpoint says what it is wherever it is copied: a resume compares its settings with it,
    and src.eval and src.predict rebuild its network from it."""

    def __init__(self, config: dict):
        self.config = config

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint):
        checkpoint["config"] = self.config
