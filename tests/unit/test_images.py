import io

import numpy as np
import pytest
from PIL import Image

from shared.images import decode_image, decode_images, encode_image, to_mnist_form, user_image_to_mnist


def test_round_trip_keeps_every_pixel():
    image = np.random.default_rng(0).integers(0, 256, size=(28, 28), dtype=np.uint8)
    assert np.array_equal(decode_image(encode_image(image)), image)


def test_reads_arrays_written_by_plain_np_save_with_a_channel_axis():
    image = np.arange(784, dtype=np.uint8).reshape(28, 28, 1)
    buffer = io.BytesIO()
    np.save(buffer, image)
    assert decode_image(buffer.getvalue()).shape == (28, 28)


def test_refuses_pickled_objects():
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a stored image"):
        decode_image(buffer.getvalue())


@pytest.mark.parametrize(
    "array, message",
    [(np.zeros((28, 27), np.uint8), "28x28"), (np.zeros((3, 28, 28), np.uint8), "28x28"), (np.zeros((28, 28), np.float32), "uint8")],
)
def test_refuses_wrong_shapes_and_types(array, message):
    buffer = io.BytesIO()
    np.save(buffer, array)
    with pytest.raises(ValueError, match=message):
        decode_image(buffer.getvalue())
    with pytest.raises(ValueError, match=message):
        encode_image(array)


@pytest.mark.parametrize("data", [b"", b"garbage bytes", encode_image(np.zeros((28, 28), np.uint8))[:100]])
def test_refuses_garbage_and_truncated_data(data):
    with pytest.raises(ValueError, match="not a stored image"):
        decode_image(data)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_user_picture_is_inverted_cropped_and_centred():
    paper = np.full((200, 300), 255, dtype=np.uint8)
    paper[20:120, 200:240] = 0  # a dark bar far off-centre on white paper
    digit = user_image_to_mnist(png_bytes(paper), max_pixels=10**6)
    assert digit.shape == (28, 28) and digit.dtype == np.uint8
    rows, cols = np.nonzero(digit > 128)
    assert rows.max() - rows.min() + 1 == 20  # longer side scaled to the 20 px box
    assert abs(rows.mean() - 13.5) < 1.5 and abs(cols.mean() - 13.5) < 1.5
    assert digit[0, 0] == 0  # background is black after inversion


def test_blank_picture_becomes_an_empty_field():
    assert not to_mnist_form(Image.new("L", (50, 50), 255)).any()


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"not an image at all", "not an image"),
        (png_bytes(np.zeros((10, 10), np.uint8))[:40], "could not be decoded|not an image"),
    ],
)
def test_bad_user_files_are_refused_with_a_message(data, message):
    with pytest.raises(ValueError, match=message):
        user_image_to_mnist(data, max_pixels=10**6)


def test_pixel_limit_is_checked_before_decoding():
    with pytest.raises(ValueError, match="pixels"):
        user_image_to_mnist(png_bytes(np.zeros((100, 100), np.uint8)), max_pixels=5000)


def test_animated_pictures_are_refused_rather_than_guessing_a_frame():
    frames = [Image.new("L", (40, 40), 255), Image.new("L", (40, 40), 0)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    with pytest.raises(ValueError, match="animated"):
        user_image_to_mnist(buffer.getvalue(), max_pixels=10**6)


def test_a_single_frame_gif_is_accepted():
    paper = np.full((60, 60), 255, dtype=np.uint8)
    paper[10:50, 28:34] = 0
    buffer = io.BytesIO()
    Image.fromarray(paper).save(buffer, format="GIF")
    assert user_image_to_mnist(buffer.getvalue(), max_pixels=10**6).any()


def test_a_blank_picture_is_refused_as_having_no_digit():
    with pytest.raises(ValueError, match="no digit"):
        user_image_to_mnist(png_bytes(np.full((50, 50), 255, np.uint8)), max_pixels=10**6)


def test_decode_images_reads_a_batch_of_our_own_images_and_any_other_valid_npy():
    rng = np.random.default_rng(3)
    digits = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    ours = [encode_image(digit) for digit in digits]
    assert np.array_equal(decode_images(ours), digits)
    other = io.BytesIO()
    np.save(other, np.asfortranarray(digits[0]).reshape(28, 28, 1))  # a different .npy header, still a valid image
    assert np.array_equal(decode_images([*ours, other.getvalue()]), np.concatenate([digits, digits[:1]]))
    assert decode_images([]).shape == (0, 28, 28)


def test_decode_images_refuses_a_batch_with_a_corrupt_image():
    with pytest.raises(ValueError):
        decode_images([encode_image(np.zeros((28, 28), np.uint8)), b"\x93NUMPY garbage"])
