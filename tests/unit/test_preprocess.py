"""A user's picture -> a digit in MNIST form: inverted, cropped, centred; what is no picture of one is refused."""

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from shared.images.preprocess import ACCEPTED_FORMATS, open_user_image, to_mnist_form, user_image_to_mnist
from tests.support import digits

MAX_PIXELS = 10**6


def picture_bytes(array: np.ndarray, image_format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=image_format)
    return buffer.getvalue()


def test_user_picture_is_inverted_cropped_and_centred():
    paper = np.full((200, 300), 255, dtype=np.uint8)
    paper[20:120, 200:240] = 0  # a dark bar far off-centre on white paper
    digit = user_image_to_mnist(picture_bytes(paper), max_pixels=MAX_PIXELS)
    assert digit.shape == (28, 28) and digit.dtype == np.uint8
    rows, cols = np.nonzero(digit > 128)
    assert rows.max() - rows.min() + 1 == 20  # longer side scaled to the 20 px box
    assert abs(rows.mean() - 13.5) < 1.5 and abs(cols.mean() - 13.5) < 1.5
    assert digit[0, 0] == 0  # background is black after inversion


def test_light_ink_on_dark_paper_is_kept_as_it_is():
    dark = np.zeros((100, 100), dtype=np.uint8)
    dark[20:80, 45:55] = 255
    light = np.full((100, 100), 255, dtype=np.uint8)
    light[20:80, 45:55] = 0
    as_mnist = to_mnist_form(Image.fromarray(dark))
    assert as_mnist[0, 0] == 0 and as_mnist.max() > 200
    assert np.array_equal(as_mnist, to_mnist_form(Image.fromarray(light)))


def test_transparent_pixels_are_paper():
    ink = np.zeros((60, 60, 4), dtype=np.uint8)  # transparent everywhere ...
    ink[10:50, 27:33] = (0, 0, 0, 255)  # ... but an opaque black stroke
    digit = user_image_to_mnist(picture_bytes(ink), max_pixels=MAX_PIXELS)
    assert digit[0, 0] == 0 and digit.max() > 200


def test_blank_picture_becomes_an_empty_field():
    assert not to_mnist_form(Image.new("L", (50, 50), 255)).any()


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"not an image at all", "not an image"),
        (picture_bytes(np.zeros((10, 10), np.uint8))[:40], "could not be decoded|not an image"),
        (picture_bytes(np.zeros((10, 10), np.uint8), "TIFF"), "not accepted"),
    ],
    ids=["empty", "not an image", "truncated", "TIFF"],
)
def test_bad_user_files_are_refused_with_a_message(data, message):
    with pytest.raises(ValueError, match=message):
        user_image_to_mnist(data, max_pixels=MAX_PIXELS)


def test_pixel_limit_is_checked_before_decoding():
    with pytest.raises(ValueError, match="pixels"):
        user_image_to_mnist(picture_bytes(np.zeros((100, 100), np.uint8)), max_pixels=5000)


def test_animated_pictures_are_refused_rather_than_guessing_a_frame():
    frames = [Image.new("L", (40, 40), 255), Image.new("L", (40, 40), 0)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    with pytest.raises(ValueError, match="animated"):
        user_image_to_mnist(buffer.getvalue(), max_pixels=MAX_PIXELS)


def test_a_single_frame_gif_is_accepted():
    paper = np.full((60, 60), 255, dtype=np.uint8)
    paper[10:50, 28:34] = 0
    assert user_image_to_mnist(picture_bytes(paper, "GIF"), max_pixels=MAX_PIXELS).any()


@pytest.mark.parametrize("image_format", sorted(ACCEPTED_FORMATS))
def test_every_accepted_format_opens(image_format):
    paper = np.full((60, 60), 255, dtype=np.uint8)
    paper[10:50, 28:34] = 0
    assert open_user_image(picture_bytes(paper, image_format), max_pixels=MAX_PIXELS).format == image_format


def test_a_blank_picture_is_refused_as_having_no_digit():
    with pytest.raises(ValueError, match="no digit"):
        user_image_to_mnist(picture_bytes(np.full((50, 50), 255, np.uint8)), max_pixels=MAX_PIXELS)


# Pictures from real sources: each must come out as the same digit as a plain black-on-white picture of it.
SAME_DIGIT_CORRELATION = 0.9


def thick_zero(side: int = 160, stroke: int = 40, margin: int = 0, paper: int = 255, ink: int = 0) -> np.ndarray:
    """A ring ``stroke`` px thick inside a box of ``side`` px, ``margin`` px of paper around it."""
    picture = Image.new("L", (side * 3 // 4 + 2 * margin, side + 2 * margin), paper)
    ImageDraw.Draw(picture).ellipse(
        (margin, margin, margin + side * 3 // 4 - 1, margin + side - 1), outline=ink, width=stroke
    )
    return np.asarray(picture)


def same_digit(a: np.ndarray, b: np.ndarray) -> bool:
    """Correlated once both are blurred by a pixel, so that a shift of one pixel
    (a rounding of the centre) still matches."""
    a, b = (np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(1)), dtype=float).ravel() for x in (a, b))
    return float(np.corrcoef(a, b)[0, 1]) > SAME_DIGIT_CORRELATION


def test_a_thick_zero_cropped_to_touch_all_four_edges_is_read_not_refused():
    tight = thick_zero()
    assert (
        (tight[0] < 128).any() and (tight[-1] < 128).any() and (tight[:, 0] < 128).any() and (tight[:, -1] < 128).any()
    )
    assert (tight < 128).mean() > 0.5  # the ink covers most of the picture: its median is ink
    digit = user_image_to_mnist(picture_bytes(tight), max_pixels=MAX_PIXELS)
    assert digit[14, 14] < 50 and digit.max() == 255  # a hole of paper inside a ring of ink
    assert same_digit(digit, to_mnist_form(Image.fromarray(thick_zero(margin=60))))


@pytest.mark.parametrize("index", range(5))
def test_mnist_digits_cut_tight_and_thickened_to_fill_the_frame_are_the_same_digits(index):
    images, labels = digits.mnist_test_digits(5)  # 7 2 1 0 4: five different digits
    image, other = images[index], images[(index + 1) % 5]
    reference = to_mnist_form(Image.fromarray(255 - np.kron(image, np.ones((6, 6), np.uint8))))
    assert not same_digit(reference, to_mnist_form(Image.fromarray(other)))  # the measure tells digits apart
    big = Image.fromarray(255 - image).resize((168, 168), Image.Resampling.BICUBIC)
    thick = big.filter(ImageFilter.MinFilter(7))  # black ink spreads 3 px each way
    for picture in (big, thick):
        rows, cols = np.nonzero(np.asarray(picture) < 128)
        tight = picture.crop((cols.min(), rows.min(), cols.max() + 1, rows.max() + 1))
        assert same_digit(user_image_to_mnist(picture_bytes(np.asarray(tight)), max_pixels=MAX_PIXELS), reference)


def test_light_ink_on_a_dark_board_is_the_same_digit_as_dark_ink_on_paper():
    chalk = to_mnist_form(Image.fromarray(thick_zero(stroke=20, margin=30, paper=40, ink=220)))
    assert chalk[0, 0] == 0 and chalk.max() == 255
    assert same_digit(chalk, to_mnist_form(Image.fromarray(thick_zero(stroke=20, margin=30))))


@pytest.mark.parametrize(
    ("paper", "ink"), [(170, 40), (240, 175)], ids=["dark ink on grey paper", "faint pencil on white"]
)
def test_grey_paper_goes_to_black_and_faint_ink_to_full_strength(paper, ink):
    digit = to_mnist_form(Image.fromarray(thick_zero(stroke=20, margin=30, paper=paper, ink=ink)))
    assert digit[:4].max() == 0 and digit[2, 14] == 0  # no grey box where the paper was
    assert digit.max() == 255
    assert same_digit(digit, to_mnist_form(Image.fromarray(thick_zero(stroke=20, margin=30))))


def test_a_small_digit_off_centre_on_a_big_page_is_found_and_centred():
    page = np.full((800, 1200), 255, dtype=np.uint8)
    page[40:80, 1100:1130] = thick_zero(side=40, stroke=8)
    digit = user_image_to_mnist(picture_bytes(page), max_pixels=MAX_PIXELS)
    rows, cols = np.nonzero(digit > 128)
    assert rows.max() - rows.min() + 1 >= 19 and abs(rows.mean() - 14) < 1.5 and abs(cols.mean() - 14) < 1.5
    assert same_digit(digit, to_mnist_form(Image.fromarray(thick_zero(stroke=40, margin=30))))


def test_too_little_contrast_is_no_digit():
    faint = thick_zero(stroke=20, margin=30, paper=200, ink=180)  # 20 grey levels: JPEG noise, a shadow
    assert not to_mnist_form(Image.fromarray(faint)).any()


def test_mnist_digits_fed_as_pictures_come_out_as_they_went_in():
    images, _ = digits.mnist_test_digits(300)
    for as_picture in (images, 255 - images):  # light on black, and the same printed black on white
        out = np.stack([to_mnist_form(Image.fromarray(image)) for image in as_picture])
        unchanged = np.abs(out.astype(int) - images).max(axis=(1, 2)) <= 3
        assert unchanged.mean() > 0.7
        # The rest are moved by one pixel where their centre of mass falls halfway between two.
        moved = np.abs(centre_of_mass(out) - centre_of_mass(images))
        assert moved.max() < 1.05 and (moved < 0.1).mean() > 0.95


def centre_of_mass(images: np.ndarray) -> np.ndarray:
    weights = images.astype(float)
    total = weights.sum(axis=(1, 2))
    positions = np.arange(images.shape[1])
    return np.stack(
        [(weights.sum(axis=2) * positions).sum(axis=1) / total, (weights.sum(axis=1) * positions).sum(axis=1) / total]
    )


@pytest.mark.parametrize("size", [(1, 2000), (2000, 1), (3, 5000)])
def test_a_long_thin_jpeg_is_read_or_refused_with_a_message_never_an_error(size):
    """Its short side, scaled down for the analysis, rounded to no pixel: Pillow's draft divided by zero."""
    data = picture_bytes(np.full(size[::-1], 255, dtype=np.uint8), "JPEG")
    try:
        digit = user_image_to_mnist(data, max_pixels=MAX_PIXELS * 20)
    except ValueError as error:
        assert "digit" in str(error) or "decoded" in str(error), error
    else:
        assert digit.shape == (28, 28)
