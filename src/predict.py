"""Classify your own digit images: `python -m src.predict ckpt_path=<checkpoint> input=<path>`.

Any size, dark-on-light or light-on-dark: each image is brought to MNIST's form (white digit on
black, fitted into 20×20 and centred by its centre of mass in 28×28) before the net sees it.
"""

import logging
import sys
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig

from src.errors import InputError

log = logging.getLogger(__name__)
SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@hydra.main(config_path="../conf", config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Print `<file> prediction: <digit> (p=<probability>)` for every image."""
    try:
        for file, digit, probability in predict(Path(cfg.ckpt_path), Path(cfg.input)):
            print(f"{file} prediction: {digit} (p={probability:.3f})")
    except InputError as err:
        log.error("%s", err)
        sys.exit(2)


def to_mnist(image) -> np.ndarray:
    """A PIL image → 28×28 float array in [0, 1], white digit on black like MNIST."""
    from PIL import Image

    gray = np.asarray(image.convert("L"), dtype=np.float32) / 255
    if np.median(gray) > 0.5:  # dark ink on light paper
        gray = 1 - gray
    gray = np.clip(gray - np.median(gray), 0, None)  # the background becomes 0
    if gray.max() > 0:
        gray /= gray.max()
    rows, cols = np.nonzero(gray > 0.1)
    if len(rows):
        gray = gray[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    # MNIST's digits fit a 20×20 box, aspect ratio kept...
    scale = 20 / max(gray.shape)
    size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
    digit = np.asarray(Image.fromarray(gray).resize(size, Image.Resampling.LANCZOS))
    digit = np.clip(digit, 0, 1)
    # ...placed so that their centre of mass sits at the centre of the 28×28 image.
    canvas = np.zeros((28, 28), dtype=np.float32)
    total = digit.sum() or 1.0
    com_y = (digit.sum(axis=1) * np.arange(digit.shape[0])).sum() / total
    com_x = (digit.sum(axis=0) * np.arange(digit.shape[1])).sum() / total
    top = int(np.clip(round(14 - com_y), 0, 28 - digit.shape[0]))
    left = int(np.clip(round(14 - com_x), 0, 28 - digit.shape[1]))
    canvas[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return canvas


def image_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES)
        if files:
            return files
        raise InputError(f"input={path} holds no images ({', '.join(sorted(SUFFIXES))})")
    raise InputError(f"input={path} does not exist: give an image file or a folder of them")


def predict(ckpt_path: Path, input_path: Path) -> list[tuple[Path, int, float]]:
    """(file, predicted digit, its softmax probability) for every image under `input_path`."""
    files = image_files(input_path)
    from src.checkpoints import load_module

    model, _, checkpoint = load_module(ckpt_path)

    import torch
    from PIL import Image, UnidentifiedImageError

    from src.modules import DigitModule

    if not isinstance(model, DigitModule):
        raise InputError(
            f"ckpt_path={ckpt_path} is a {type(model).__name__} checkpoint: predict classifies "
            "digit images, with a checkpoint of a digit classifier"
        )
    stats = checkpoint.get("MNISTDataModule", {})  # the training run's normalization, if any

    images = []
    for file in files:
        try:
            with Image.open(file) as image:
                images.append(to_mnist(image))
        except (UnidentifiedImageError, OSError) as err:
            raise InputError(f"{file} is not a readable image: {err}") from None
    x = torch.from_numpy(np.stack(images)).unsqueeze(1)
    if stats:
        x = (x - stats["mean"]) / stats["std"]
    with torch.no_grad():
        probabilities, digits = model(x).softmax(dim=1).max(dim=1)
    return list(zip(files, digits.tolist(), probabilities.tolist(), strict=True))


if __name__ == "__main__":
    main()
