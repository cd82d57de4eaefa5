"""Test a checkpoint: `python -m src.eval ckpt_path=<run dir>/checkpoints/last.ckpt`."""

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from src.command_line import CONF, console_script, run_command_line
from src.config import register
from src.errors import InputError
from src.names import RECORD
from src.records import write_json

log = logging.getLogger(__name__)
register()


@hydra.main(config_path=str(CONF), config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point; exits with status 2 and one message on bad input."""
    try:
        record = evaluate(cfg, Path(HydraConfig.get().runtime.output_dir))
    except InputError as err:
        log.error("%s", err)
        sys.exit(2)
    # Every test number the module logs (a classifier's test/ece too), as metrics.json has them.
    tested = sorted(key for key in record if key.startswith("test/"))
    log.info("%s", ", ".join(f"{key} {record[key]:.4f}" for key in tested))


def evaluate(cfg: DictConfig, out_dir: Path) -> dict:
    """Test the checkpoint's weights on its run's data; write and return `metrics.json`."""
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise InputError("ckpt_path is missing: python -m src.eval ckpt_path=<a checkpoint>")
    from src.build import build_trainer
    from src.checkpoints import load_run
    from src.console import quiet_console

    quiet_console()

    ckpt = Path(cfg.ckpt_path)
    module, datamodule, _ = load_run(ckpt, allow=cfg.allow, data_dir=cfg.data_dir)

    trainer = build_trainer(cfg.trainer, logger=False, enable_checkpointing=False)
    (results,) = trainer.test(module, datamodule=datamodule, verbose=False)
    record = {key: float(value) for key, value in results.items()}
    record |= {"ckpt_path": str(ckpt), "status": "completed"}
    write_json(out_dir / RECORD, record)
    return record


cli = console_script(main)  # the console script primer-eval (pyproject.toml)


if __name__ == "__main__":
    run_command_line(main)
