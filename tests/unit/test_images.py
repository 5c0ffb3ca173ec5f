"""The storage codec: 28x28 uint8 arrays in and out of BYTEA, never unpickled, and out as PNG."""

import io

import numpy as np
import pytest
from PIL import Image

from shared.images.codec import decode_image, decode_images, encode_image, png_bytes


def npy(array: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, **options)
    return buffer.getvalue()


def test_round_trip_keeps_every_pixel():
    image = np.random.default_rng(0).integers(0, 256, size=(28, 28), dtype=np.uint8)
    assert np.array_equal(decode_image(encode_image(image)), image)


def test_reads_arrays_written_by_plain_np_save_with_a_channel_axis():
    image = np.arange(784, dtype=np.uint8).reshape(28, 28, 1)
    assert decode_image(npy(image)).shape == (28, 28)


def test_refuses_pickled_objects():
    with pytest.raises(ValueError, match="not a stored image"):
        decode_image(npy(np.array([{"evil": 1}], dtype=object), allow_pickle=True))


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((28, 27), np.uint8), "28x28"),
        (np.zeros((3, 28, 28), np.uint8), "28x28"),
        (np.zeros((28, 28), np.float32), "uint8"),
    ],
)
def test_refuses_wrong_shapes_and_types(array, message):
    with pytest.raises(ValueError, match=message):
        decode_image(npy(array))
    with pytest.raises(ValueError, match=message):
        encode_image(array)


@pytest.mark.parametrize("data", [b"", b"garbage bytes", encode_image(np.zeros((28, 28), np.uint8))[:100]])
def test_refuses_garbage_and_truncated_data(data):
    with pytest.raises(ValueError, match="not a stored image"):
        decode_image(data)


def test_decode_images_reads_a_batch_of_our_own_images_and_any_other_valid_npy():
    rng = np.random.default_rng(3)
    digits = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    ours = [encode_image(digit) for digit in digits]
    assert np.array_equal(decode_images(ours), digits)
    other = npy(np.asfortranarray(digits[0]).reshape(28, 28, 1))  # a different .npy header, still a valid image
    assert np.array_equal(decode_images([*ours, other]), np.concatenate([digits, digits[:1]]))
    assert decode_images([]).shape == (0, 28, 28)


def test_decode_images_refuses_a_batch_with_a_corrupt_image():
    with pytest.raises(ValueError):
        decode_images([encode_image(np.zeros((28, 28), np.uint8)), b"\x93NUMPY garbage"])


def test_png_bytes_is_the_stored_image_as_a_greyscale_png():
    image = (np.arange(784) % 256).astype(np.uint8).reshape(28, 28)
    picture = Image.open(io.BytesIO(png_bytes(image)))
    assert (picture.format, picture.mode) == ("PNG", "L")
    assert np.array_equal(np.asarray(picture), image)
    with pytest.raises(ValueError, match="28x28"):
        png_bytes(np.zeros((10, 10), np.uint8))
