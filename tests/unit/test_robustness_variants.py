"""The robustness suite's pictures: valid files of the intended size and polarity, the same for a seed,
and still the digit they were made from where the variant means to keep it."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image, ImageFilter
from skimage import morphology

from bench import variants
from bench.robustness import Prepared, prepare_variant, score, subset
from shared.config import PROJECT_ROOT
from shared.images.preprocess import to_mnist_form, user_image_to_mnist
from tests.support import digits

DIGITS = 6
MAX_PIXELS = 10**6
# Blurred correlation with the clean digit's MNIST form. Variants that change the shape on purpose
# (strokes, slant, blur, 8 px) need only be nearer their own digit than any other digit.
SHAPE_CHANGED = {
    *("thick", "thin", "fills_box", "blur", "low_res_8", "slant_right", "slant_left", "canvas"),
    *("marker", "fineliner"),
}
SAME_SHAPE_CORRELATION = 0.85


@pytest.fixture(scope="module")
def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    return digits.mnist_test_digits(DIGITS)


def rendered(name: str, images: np.ndarray, seed: int = 0) -> list[Image.Image]:
    return [Image.open(io.BytesIO(data)) for data in variants.render_variant(name, images, np.random.default_rng(seed))]


def grey(picture: Image.Image) -> np.ndarray:
    return np.asarray(picture.convert("L"), dtype=np.int16)


def border(array: np.ndarray) -> np.ndarray:
    return np.concatenate([array[0], array[-1], array[:, 0], array[:, -1]])


def blurred_correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = (np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(1)), dtype=float).ravel() for x in (a, b))
    return float(np.corrcoef(a, b)[0, 1])


@pytest.mark.parametrize("name", list(variants.VARIANTS))
def test_each_variant_is_a_valid_upload_of_a_plausible_size(name, mnist_digits):
    variant = variants.VARIANTS[name]
    for picture in rendered(name, mnist_digits[0]):
        assert picture.format == variant.image_format
        picture.load()
        width, height = picture.size
        if name == "clean":
            assert picture.size == (28, 28)
        elif name == "photo":
            assert 500 <= min(width, height) and max(width, height) <= max(variants.PHOTO_SIZE), picture.size
        elif name == "canvas":
            assert picture.size == (variants.CANVAS_SIDE, variants.CANVAS_SIDE) and picture.mode == "RGBA"
        else:
            assert 50 <= max(width, height) <= 400 and min(width, height) >= 20, picture.size


@pytest.mark.parametrize("name", list(variants.VARIANTS))
def test_a_seed_gives_the_same_pictures(name, mnist_digits):
    images = mnist_digits[0][:3]
    first = variants.render_variant(name, images, np.random.default_rng(5))
    assert first == variants.render_variant(name, images, np.random.default_rng(5))
    if name != "clean":  # the only variant with nothing random
        assert first != variants.render_variant(name, images, np.random.default_rng(6))


@pytest.mark.parametrize("name", list(variants.VARIANTS))
def test_ink_is_there_with_the_intended_polarity(name, mnist_digits):
    light_ink = variants.VARIANTS[name].light_ink
    for picture in rendered(name, mnist_digits[0]):
        levels = grey(picture)
        paper = np.median(border(levels))
        ink = levels.max() if light_ink else levels.min()
        assert (ink - paper if light_ink else paper - ink) > 40, (paper, ink)
        assert (paper < 128) == light_ink


@pytest.mark.parametrize("name", ["tight_crop", "fills_box"])
def test_tight_variants_have_ink_on_every_edge(name, mnist_digits):
    for picture in rendered(name, mnist_digits[0]):
        ink = grey(picture) <= variants.WHITE - variants.TIGHT_CROP_INK
        assert ink[0].any() and ink[-1].any() and ink[:, 0].any() and ink[:, -1].any()


def test_thick_and_thin_change_the_strokes_the_intended_way(mnist_digits):
    def ink_share(name: str) -> float:
        return float(np.mean([np.mean(grey(picture) < 128) for picture in rendered(name, mnist_digits[0])]))

    # The same seed gives the same page sizes and margins; jpeg is the plain digit on them, so only the strokes differ.
    assert 1.2 * ink_share("thin") < ink_share("jpeg") < ink_share("thick") / 1.2


def test_slants_lean_opposite_ways(mnist_digits):
    one = mnist_digits[0][2]  # the third test digit is a 1
    assert mnist_digits[1][2] == 1

    def lean(name: str) -> float:
        ink = 255 - grey(rendered(name, one[None])[0])
        rows = np.arange(ink.shape[0])[:, None]
        top, bottom = ink * (rows < ink.shape[0] / 2), ink * (rows >= ink.shape[0] / 2)
        columns = np.arange(ink.shape[1])
        return float(
            (top.sum(axis=0) * columns).sum() / top.sum() - (bottom.sum(axis=0) * columns).sum() / bottom.sum()
        )

    assert lean("slant_right") > lean("slant_left") + 20


def test_the_canvas_brush_is_the_web_pads(mnist_digits):
    script = (PROJECT_ROOT / "web" / "static" / "draw.js").read_text()
    assert int(re.search(r"STROKE_WIDTH = (\d+)", script).group(1)) == variants.CANVAS_BRUSH
    for picture in rendered("canvas", mnist_digits[0]):
        ink = grey(picture) < 128
        width = ink.sum() / morphology.skeletonize(ink).sum()  # area / length of the stroke
        assert 0.7 * variants.CANVAS_BRUSH < width < 1.3 * variants.CANVAS_BRUSH


def test_the_small_digit_is_small_and_near_a_corner(mnist_digits):
    for picture in rendered("off_centre_small", mnist_digits[0]):
        rows, cols = np.nonzero(grey(picture) < 128)
        assert rows.max() - rows.min() < 50 and cols.max() - cols.min() < 50
        assert min(cols.min(), 400 - cols.max()) < 90 and min(rows.min(), 300 - rows.max()) < 80


@pytest.mark.parametrize("name", [name for name in variants.VARIANTS if name != "clean"])
def test_each_variant_is_still_its_digit_after_the_upload_path(name, mnist_digits):
    images, labels = mnist_digits
    references = [to_mnist_form(Image.fromarray(image)) for image in images]
    for index, data in enumerate(variants.render_variant(name, images, np.random.default_rng(0))):
        digit = user_image_to_mnist(data, MAX_PIXELS)
        own = blurred_correlation(digit, references[index])
        others = [blurred_correlation(digit, references[j]) for j in range(len(images)) if labels[j] != labels[index]]
        assert own > max(others), (labels[index], own, max(others))
        if name not in SHAPE_CHANGED:
            assert own > SAME_SHAPE_CORRELATION


def test_unknown_variants_are_refused(mnist_digits):
    with pytest.raises(ValueError, match="unknown variant"):
        variants.render_variant("sepia", mnist_digits[0], np.random.default_rng(0))


def test_refusals_count_as_errors_and_are_reported_apart():
    class Always7:
        def predict_batch(self, images: np.ndarray) -> np.ndarray:
            return np.eye(10, dtype=np.float32)[np.full(len(images), 7)]

    prepared = Prepared(np.zeros((4, 28, 28), np.uint8), np.array([False, True, False, False]), np.array([7, 7, 1, 7]))
    expected = {"accuracy": 0.5, "refused": 0.25, "images": 4, "ece": pytest.approx(1 / 3, abs=1e-4)}
    assert score(Always7(), prepared) == expected


def test_every_variant_and_model_sees_the_same_subset(mnist_digits):
    assert np.array_equal(subset(10_000, 50), subset(10_000, 50)) and len(np.unique(subset(10_000, 50))) == 50
    assert np.array_equal(subset(10, None), np.arange(10))
    images, labels = mnist_digits
    first, again = prepare_variant("jpeg", images, labels), prepare_variant("jpeg", images, labels)
    assert np.array_equal(first.digits, again.digits) and not first.refused.any()


def test_other_writers_digits_go_through_the_upload_path_as_pictures():
    pytest.importorskip("sklearn")
    from bench.robustness import prepare_source

    prepared = prepare_source("uci_digits", 20)
    assert prepared is not None and len(prepared.digits) == 20 and not prepared.refused.any()
    assert set(prepared.labels) <= set(range(10))
    rows, cols = np.nonzero(prepared.digits[0] > 128)
    assert 17 <= max(rows.max() - rows.min(), cols.max() - cols.min()) + 1 <= 20  # in MNIST's 20 px box
