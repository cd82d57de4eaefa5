"""A resumed run trains with the optimizer settings it is given, not those its checkpoint had."""

import lightning as L


class ResumedSettings(L.Callback):
    """Makes a resumed run use the optimizer settings it is given rather than those its
    checkpoint restored: a new learning rate scales the restored rates (a schedule keeps its
    progress, at the new scale); other settings (momentum, weight decay) are set."""

    LR_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")

    def __init__(self, changes: dict[str, list]):
        self.settings = {
            key.removeprefix("optimizer."): values
            for key, values in changes.items()
            if key.startswith("optimizer.") and not key.startswith("optimizer._")
        }

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for key, (then, now) in self.settings.items():
            for optimizer in trainer.optimizers:
                for group in optimizer.param_groups:
                    if key == "lr":
                        for name in self.LR_KEYS:
                            if name in group:
                                group[name] *= now / then
                    elif key in group:
                        group[key] = tuple(now) if isinstance(group[key], tuple) else now
            if key == "lr":
                for config in trainer.lr_scheduler_configs:
                    if hasattr(config.scheduler, "base_lrs"):
                        config.scheduler.base_lrs = [lr * now / then for lr in
                                                     config.scheduler.base_lrs]  # fmt: skip
