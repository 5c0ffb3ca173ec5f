"""A user's picture -> a digit in MNIST form: inverted, cropped, centred; what is no picture of one is refused."""

import io

import numpy as np
import pytest
from PIL import Image

from shared.preprocess import ACCEPTED_FORMATS, open_user_image, to_mnist_form, user_image_to_mnist

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
