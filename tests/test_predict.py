"""predict reads real image files: every mode PIL opens, transparency as white paper, and refuses
blank, tiny and oversized images in one line; the command skips them in a folder and says when
an answer is unsure."""

import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from src.predict import UNSURE_BELOW, BadImage, read_digit, to_mnist
from tests.conftest import run_train
from tests.test_pictures import LINE, run_module


def drawn(shape, size=(56, 72)) -> np.ndarray:
    """Dark ink on white paper, uint8, its edges anti-aliased: drawn 4× larger, then shrunk."""
    big = Image.new("L", (4 * size[0], 4 * size[1]), 255)
    draw = ImageDraw.Draw(big)
    if shape == "seven":
        draw.line([(40, 40), (180, 40), (90, 250)], fill=0, width=28)
    elif shape == "hbar":
        draw.rectangle([20, 130, 200, 150], fill=0)
    elif shape == "vbar":
        draw.rectangle([100, 20, 120, 260], fill=0)
    return np.asarray(big.resize(size, Image.Resampling.BOX))


PAPER = drawn("seven")  # 255 paper, 0 ink, grey at the edges
INK = 255 - PAPER
ZERO = np.zeros_like(PAPER)


def alpha_only(mode: str, black: Image.Image) -> Image.Image:
    """Black everywhere, the strokes opaque and the paper transparent: a drawing canvas's PNG."""
    return Image.merge(mode, (*black.split(), Image.fromarray(INK)))


def transparent_palette(path: Path) -> None:
    """A palette of 256 blacks whose index i is 255 - i opaque: transparency alone draws it."""
    image = Image.fromarray(PAPER, "P")
    image.putpalette([0, 0, 0] * 256)
    image.save(path, transparency=bytes(255 - i for i in range(256)))


# mode read back → (what is written, file suffix)
MODES = {
    "RGB": (lambda: Image.fromarray(PAPER).convert("RGB"), "png"),
    "CMYK": (lambda: Image.fromarray(PAPER).convert("CMYK"), "tiff"),
    "1": (lambda: Image.fromarray(PAPER).convert("1"), "png"),
    "P": (lambda: Image.fromarray(PAPER).convert("P"), "png"),
    "LA": (lambda: alpha_only("LA", Image.fromarray(ZERO)), "png"),
    "RGBA": (lambda: alpha_only("RGBA", Image.fromarray(ZERO).convert("RGB")), "png"),
    "PA": (lambda: alpha_only("PA", Image.fromarray(ZERO).convert("P")), "tiff"),
    "I;16": (lambda: Image.fromarray(PAPER.astype(np.uint16) * 257), "png"),
    "I;16B": (lambda: Image.fromarray((PAPER.astype(np.uint16) * 257).astype(">u2")), "tiff"),
    "I": (lambda: Image.fromarray(PAPER.astype(np.int32) * 1000 - 100_000), "tiff"),
    "F": (lambda: Image.fromarray(PAPER.astype(np.float32) / 255), "tiff"),
}


def reference() -> np.ndarray:
    return to_mnist(Image.fromarray(PAPER))


def read_back(path: Path, mode: str) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == mode, f"{path.name} was read back in mode {image.mode}"
        return to_mnist(image)


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_reads_as_the_same_digit(mode, tmp_path):
    make, suffix = MODES[mode]
    path = tmp_path / f"seven.{suffix}"
    make().save(path)
    got, want = read_back(path, mode), reference()
    assert got.shape == (28, 28) and got.max() == pytest.approx(1)
    if mode == "1":  # thresholded: the grey edges are gone, the digit is where it was
        assert got.sum() == pytest.approx(want.sum(), rel=0.15)
        assert np.abs(centre_of_mass(got) - centre_of_mass(want)).max() < 0.5
    else:
        assert np.abs(got - want).max() < 0.02


def centre_of_mass(image: np.ndarray) -> np.ndarray:
    rows, cols = np.indices(image.shape)
    return np.array([(rows * image).sum(), (cols * image).sum()]) / image.sum()


def test_a_palette_whose_transparency_alone_draws_the_digit(tmp_path):
    transparent_palette(tmp_path / "seven.png")
    assert np.abs(read_back(tmp_path / "seven.png", "P") - reference()).max() < 0.02


def test_sixteen_bits_that_use_twelve_come_out_at_full_contrast(tmp_path):
    twelve = np.round(PAPER.astype(np.float32) * 4095 / 255).astype(np.uint16)
    Image.fromarray(twelve).save(tmp_path / "seven.png")
    got = read_back(tmp_path / "seven.png", "I;16")
    assert got.max() == pytest.approx(1) and np.abs(got - reference()).max() < 0.02


def test_a_dim_photo_of_paper_is_stretched_before_ink_and_paper_are_told_apart(tmp_path):
    dim = (20 + PAPER.astype(np.float32) * 0.3).astype(np.uint8)  # paper 96, ink 20: both dark
    Image.fromarray(dim).save(tmp_path / "seven.png")
    assert np.abs(read_back(tmp_path / "seven.png", "L") - reference()).max() < 0.05


def test_a_photo_stored_sideways_is_turned_upright(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: turn 90° clockwise to show
    sideways = Image.fromarray(PAPER).transpose(Image.Transpose.ROTATE_90)
    sideways.save(tmp_path / "seven.png", exif=exif)
    assert np.abs(read_digit(tmp_path / "seven.png") - reference()).max() < 0.02


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.new("L", (40, 40), 255),
        lambda: Image.new("RGB", (40, 40), "red"),
        lambda: Image.new("I;16", (40, 40), 3000),
        lambda: Image.new("RGBA", (40, 40), (0, 0, 0, 0)),  # an empty canvas: all transparent
    ],
)
def test_a_blank_image_is_refused_by_name(make, tmp_path):
    path = tmp_path / "blank.png"
    make().save(path)
    with pytest.raises(BadImage, match=f"^{re.escape(str(path))} holds no digit: it is blank"):
        read_digit(path)


@pytest.mark.parametrize("size", [(1, 1), (5, 40)])
def test_an_image_too_small_to_hold_a_digit_is_refused_by_name(size, tmp_path):
    path = tmp_path / "dot.png"
    Image.new("L", size).save(path)
    message = f"{path} is {size[0]}×{size[1]} pixels: too small to hold a digit (at least 8×8)"
    with pytest.raises(BadImage, match=f"^{re.escape(message)}$"):
        read_digit(path)


@pytest.mark.parametrize(
    ("side", "said"),
    [
        (5000, "is 5000×5000 pixels"),  # over our limit
        (10_000, "is over 89,478,485 pixels"),  # PIL warns
        (20_000, "is over 89,478,485 pixels"),  # PIL refuses
    ],
)
def test_an_oversized_image_is_refused_from_its_header(side, said, tmp_path):
    path = tmp_path / "huge.png"
    Image.new("1", (side, side)).save(path)  # a few KB: one bit per pixel, all alike
    start = time.perf_counter()
    with pytest.raises(BadImage) as refused:
        read_digit(path)
    assert time.perf_counter() - start < 0.5  # 20000² would take seconds and 1.6 GB to decode
    assert str(refused.value) == (
        f"{path} {said}: too large (at most 16 megapixels, such as 4096×4096); scale it down first"
    )


def test_a_file_that_is_no_image_is_refused_by_name(tmp_path):
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(BadImage, match=r"notes\.png is not an image PIL can read$"):
        read_digit(tmp_path / "notes.png")
    Image.fromarray(PAPER).save(tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:200])
    with pytest.raises(BadImage, match=r"cut\.png is not a readable image: "):
        read_digit(tmp_path / "cut.png")


def test_a_mode_pil_opens_but_cannot_convert_is_refused_by_name(tmp_path):
    lab = Image.new("LAB", (30, 30), (50, 10, 10))
    lab.paste((90, 0, 0), (5, 5, 20, 25))
    lab.save(tmp_path / "lab.tiff")
    with pytest.raises(BadImage, match=r"lab\.tiff is in mode LAB, which predict cannot read; "):
        read_digit(tmp_path / "lab.tiff")


SHARED_RUNS = ("checkpoint",)  # runs several tests read: each made once (conftest.py)


@pytest.fixture(scope="module")
def checkpoint(tiny_mnist, tmp_path_factory) -> Path:
    """A net that has learnt the tiny data's bands: sure of a horizontal bar, not of a vertical."""
    run_dir = tmp_path_factory.mktemp("adam")
    run_train(
        "+experiment=mnist_adam", f"data.data_dir={tiny_mnist}", "data.val_size=100",
        "trainer.max_epochs=1", "optimizer.lr=0.01", f"hydra.run.dir={run_dir}",
    )  # fmt: skip
    return run_dir / "checkpoints" / "last.ckpt"


UNSURE = re.compile(r"^  unsure: the runner-up is (?P<digit>\d) \(p=(?P<p>0\.\d{3})\)$")


def bad_pictures(folder: Path) -> None:
    Image.new("L", (40, 40), 255).save(folder / "blank.png")
    Image.new("L", (1, 1)).save(folder / "dot.png")
    Image.new("1", (5000, 5000)).save(folder / "huge.png")
    (folder / "notes.png").write_text("not a picture")


@pytest.mark.slow
def test_the_command_skips_bad_files_and_says_when_it_is_unsure(checkpoint, tmp_path):
    folder = tmp_path / "digits"
    folder.mkdir()
    for shape in ("hbar", "vbar"):
        Image.fromarray(drawn(shape)).save(folder / f"{shape}.png")
    bad_pictures(folder)
    proc = run_module("src.predict", f"ckpt_path={checkpoint}", f"input={folder}")
    lines = proc.stdout.splitlines()
    assert lines[:4] == [
        f"{folder / 'blank.png'} skipped: it holds no digit: it is blank (one colour)",
        f"{folder / 'dot.png'} skipped: it is 1×1 pixels: too small to hold a digit (at least 8×8)",
        f"{folder / 'huge.png'} skipped: it is 5000×5000 pixels: too large (at most 16 "
        "megapixels, such as 4096×4096); scale it down first",
        f"{folder / 'notes.png'} skipped: it is not an image PIL can read",
    ]
    sure, unsure = LINE.match(lines[4]), LINE.match(lines[5])
    assert sure["file"] == str(folder / "hbar.png") and float(sure["p"]) >= UNSURE_BELOW
    assert unsure["file"] == str(folder / "vbar.png") and float(unsure["p"]) < UNSURE_BELOW
    runner_up = UNSURE.match(lines[6])
    assert runner_up["digit"] != unsure["digit"] and float(runner_up["p"]) <= float(unsure["p"])
    assert len(lines) == 7


@pytest.mark.slow
def test_the_command_refuses_a_bad_file_or_a_folder_of_them_in_one_line(checkpoint, tmp_path):
    bad_pictures(tmp_path)
    one = run_module("src.predict", f"ckpt_path={checkpoint}", f"input={tmp_path / 'dot.png'}",
                     check=False)  # fmt: skip
    assert one.returncode == 2
    assert one.stdout.strip().endswith(
        f"{tmp_path / 'dot.png'} is 1×1 pixels: too small to hold a digit (at least 8×8)"
    )
    assert len(one.stdout.splitlines()) == 1 and "Traceback" not in one.stderr
    every = run_module("src.predict", f"ckpt_path={checkpoint}", f"input={tmp_path}", check=False)
    assert every.returncode == 2
    *skipped, last = every.stdout.splitlines()
    assert len(skipped) == 4 and all(" skipped: it " in line for line in skipped)
    assert last.endswith(f"input={tmp_path}: none of its 4 images can be classified")
