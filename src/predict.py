"""Classify your own digit images: `python -m src.predict ckpt_path=<checkpoint> input=<path>`.

Reads any image PIL opens, in any mode: colour, palette, 1-bit, 16-bit or float grayscale (each
stretched over its own range), and transparent ones as if on white paper, so that a drawing
canvas's strokes saved in the alpha channel alone are read. Any size up to 16 megapixels,
dark-on-light or light-on-dark: each image is brought to MNIST's form (white digit on black,
fitted into 20×20 and centred by its centre of mass in 28×28) before the net sees it.

Refused in one line, naming the file: an image that is not one, one larger than 16 megapixels
(refused from its header, before it is decoded), one smaller than 8×8, and a blank one. In a
folder such a file is skipped and the rest are classified. An answer whose probability is under
0.5 is followed by a line saying so, which names the runner-up.
"""

import logging
import sys
import warnings
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf
from PIL import Image, ImageOps, UnidentifiedImageError

from src.command_line import CONF, console_script, run_command_line
from src.errors import InputError

log = logging.getLogger(__name__)
SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
MAX_PIXELS = 4096 * 4096  # 16 megapixels: 64 MiB as float32, ample for a photographed digit
MIN_SIDE = 8
UNSURE_BELOW = 0.5  # a top probability under this is printed with the runner-up
TOO_LARGE = "too large (at most 16 megapixels, such as 4096×4096); scale it down first"


class BadImage(InputError):
    """An image that cannot be classified; `reason` reads on from the file's name."""

    def __init__(self, file, reason: str):
        super().__init__(f"{file} {reason}")
        self.reason = reason


@hydra.main(config_path=str(CONF), config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Print `<file> prediction: <digit> (p=<probability>)` per image, or why it is skipped.

    An unsure answer is followed by an indented line naming the runner-up."""
    try:
        for key in ("ckpt_path", "input"):
            if OmegaConf.is_missing(cfg, key):
                usage = "python -m src.predict ckpt_path=<a checkpoint> input=<image or folder>"
                raise InputError(f"{key} is missing: {usage}")
        input_path = Path(cfg.input)
        files = image_files(input_path)
        images = {}
        for file in files:
            try:
                images[file] = read_digit(file)
            except BadImage as err:
                if input_path.is_file():
                    raise
                print(f"{file} skipped: it {err.reason}")
        if not images:
            count = len(files)
            raise InputError(f"input={input_path}: none of its {count} images can be classified")
        digits, probabilities = ranked(Path(cfg.ckpt_path), list(images.values()), cfg.allow)
        for file, (digit, second), (p, p_second) in zip(images, digits, probabilities, strict=True):
            print(f"{file} prediction: {digit} (p={p:.3f})")
            if p < UNSURE_BELOW:  # on a line of its own, so that every prediction line reads alike
                print(f"  unsure: the runner-up is {second} (p={p_second:.3f})")
    except InputError as err:
        log.error("%s", err)
        sys.exit(2)


def to_gray(image: Image.Image) -> np.ndarray:
    """Any mode PIL opens → float array stretched over [0, 1], 0 black; transparency is white."""
    if image.has_transparency_data:  # a canvas's strokes may live in the alpha channel alone
        paper = Image.new("RGBA", image.size, "white")
        image = Image.alpha_composite(paper, image.convert("RGBA"))
    # 16- and 32-bit values are read as they are: convert("L") would clip them at 255.
    wide = image.mode in ("I", "F") or image.mode.startswith("I;16")
    gray = np.asarray(image if wide else image.convert("L"), dtype=np.float32)
    low, high = gray.min(), gray.max()
    return (gray - low) / (high - low) if high > low else np.zeros_like(gray)


def to_mnist(image: Image.Image) -> np.ndarray:
    """A PIL image → 28×28 float array in [0, 1], white digit on black like MNIST.

    Raises BadImage for an image over MAX_PIXELS (checked before decoding), under MIN_SIDE on a
    side, or blank."""
    name = getattr(image, "filename", "") or "the image"
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise BadImage(name, f"is {width}×{height} pixels: {TOO_LARGE}")
    if min(width, height) < MIN_SIDE:
        raise BadImage(name, f"is {width}×{height} pixels: too small to hold a digit "
                       f"(at least {MIN_SIDE}×{MIN_SIDE})")  # fmt: skip
    image = ImageOps.exif_transpose(image)  # a phone stores its photos sideways, with a tag
    try:
        gray = to_gray(image)
    except ValueError:  # a mode PIL opens but cannot convert, such as LAB
        raise BadImage(name, f"is in mode {image.mode}, which predict cannot read; save it "
                       "in RGB or grayscale") from None  # fmt: skip
    if gray.max() == 0:  # stretched: only an image of one colour is all 0
        raise BadImage(name, "holds no digit: it is blank (one colour)")
    if np.median(gray) > 0.5:  # dark ink on light paper
        gray = 1 - gray
    gray = np.clip(gray - np.median(gray), 0, None)  # the background becomes 0
    gray /= gray.max()  # > 0: the median is at most 0.5 and the brightest pixel is 1
    rows, cols = np.nonzero(gray > 0.1)
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


def read_digit(file: Path) -> np.ndarray:
    """The image in `file` in MNIST's form (see to_mnist); BadImage when it cannot be."""
    try:
        # PIL's own size limits fire in Image.open, as an error or (lower) a warning: both refuse.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as image:
                return to_mnist(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage(file, f"is over {Image.MAX_IMAGE_PIXELS:,} pixels: {TOO_LARGE}") from None
    except UnidentifiedImageError:
        raise BadImage(file, "is not an image PIL can read") from None
    except OSError as err:  # a truncated or damaged file
        raise BadImage(file, f"is not a readable image: {err}") from None


def image_files(path: Path) -> list[Path]:
    """The image file `path`, or the images in the folder `path`, sorted by name."""
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES)
        if files:
            return files
        raise InputError(f"input={path} holds no images ({', '.join(sorted(SUFFIXES))})")
    raise InputError(f"input={path} does not exist: give an image file or a folder of them")


def ranked(
    ckpt_path: Path, images: list[np.ndarray], allow: list[str] = ()
) -> tuple[list[list[int]], list[list[float]]]:
    """The two likeliest digits for each 28×28 image, and their softmax probabilities. `allow`:
    modules besides src and torch whose classes the checkpoint's run config may build."""
    from src.checkpoints import load_run
    from src.console import quiet_console

    quiet_console()

    model, _, checkpoint = load_run(ckpt_path, allow)

    import torch

    from src.modules import DigitModule

    if not isinstance(model, DigitModule):
        raise InputError(
            f"ckpt_path={ckpt_path} is a {type(model).__name__} checkpoint: predict classifies "
            "digit images, with a checkpoint of a digit classifier"
        )
    stats = checkpoint.get("MNISTDataModule", {})  # the training run's normalization, if any
    x = torch.from_numpy(np.stack(images)).unsqueeze(1)
    if stats:
        x = (x - stats["mean"]) / stats["std"]
    with torch.no_grad():
        probabilities, digits = model(x).softmax(dim=1).topk(2, dim=1)
    return digits.tolist(), probabilities.tolist()


def predict(
    ckpt_path: Path, input_path: Path, allow: list[str] = ()
) -> list[tuple[Path, int, float]]:
    """(file, predicted digit, its softmax probability) for every image under `input_path`.

    Unlike the command, which skips them, a file that cannot be classified raises BadImage."""
    files = image_files(input_path)
    images = [read_digit(file) for file in files]
    digits, probabilities = ranked(ckpt_path, images, allow)
    return [(file, d[0], p[0]) for file, d, p in zip(files, digits, probabilities, strict=True)]


cli = console_script(main)  # the console script primer-predict (pyproject.toml)


if __name__ == "__main__":
    run_command_line(main)
