"""Preprocessing's shortcuts change no stored digit: every family of varied pictures (tests/support/varied_pictures.py)
comes out byte for byte as PREPROCESS_VERSION 2 made it before the shortcuts, and each shortcut agrees with the
work it skips."""

from __future__ import annotations

import numpy as np
import pytest

from shared.images import page, preprocess, preprocess_many
from shared.images.preprocess import PREPROCESS_VERSION, user_image_to_mnist
from tests.support import digits, varied_pictures

MAX_PIXELS = 10**7
# Made by main at 9fcc2b0 (before the shortcuts) with tests/support/varied_pictures.py: a digest changes when any
# picture of its family comes out differently, and then PREPROCESS_VERSION must change with it.
DIGESTS_OF_VERSION_2 = {
    "variant clean": "d71cd32418cfe2b4",
    "variant thick": "9f1f1af7bf6859b0",
    "variant thin": "5003f7c14615cc31",
    "variant tight_crop": "1e71d7ff8b3a9d11",
    "variant fills_box": "1a85aa50ce955ed1",
    "variant blur": "77b675fe88f41e5b",
    "variant low_res_16": "010362f9e9f1dae8",
    "variant low_res_8": "a1e1512925f41283",
    "variant slant_right": "8fcd2fbc185c74e0",
    "variant slant_left": "bd8059a89095df0e",
    "variant off_centre_small": "d57659c6dca74b70",
    "variant light_on_dark": "6e165e3a36fc9fe3",
    "variant dark_on_grey": "9a43c9ee526e19cc",
    "variant pencil": "1fcb560a332416d8",
    "variant jpeg": "f7cae9173de0b8bd",
    "variant canvas": "2d7b1db8602996f2",
    "variant lined_paper": "f4ac971064ef6f97",
    "variant squared_paper": "387e51c9e17ff739",
    "variant coloured_ink": "b1f5be43f2d5f678",
    "variant photo": "35f71949312ab8a7",
    "variant marker": "dd9688eec8855416",
    "variant specks": "fd8feb0a8c65266d",
    "variant fineliner": "6ff143958cdd4469",
    "28x28 dark on light": "7f3343c0f174b872",
    "28x28 light on dark": "de37ec8f4c27ef42",
    "noise": "4e54337be7036246",
    "tiny": "07e7092d07f0f02a",
    "uneven light": "2ecc47bbd4a080ec",
    "ruled": "c3fb8a4f840b9297",
    "specks": "04fd8710cbea3368",
    "scattered": "6fd03f0c5fe812b3",
    "translucent": "0f56f7744174f8c4",
    "coloured": "cb0c3edf31241ad7",
    "framed": "e54ad1abeeaa7152",
}


def preprocessed(data: bytes) -> np.ndarray | str:
    try:
        return user_image_to_mnist(data, MAX_PIXELS)
    except ValueError as error:
        return str(error)


@pytest.fixture(scope="module")
def families() -> dict[str, list[bytes]]:
    images, _ = digits.mnist_test_digits(200)
    return dict(varied_pictures.families(images))


def test_every_family_comes_out_as_version_2_made_it(families):
    assert PREPROCESS_VERSION == 2
    made = {name: varied_pictures.digest(preprocessed(data) for data in uploads) for name, uploads in families.items()}
    assert made == DIGESTS_OF_VERSION_2


def preprocessed_together(uploads: list[bytes]) -> list[np.ndarray | str]:
    """``preprocessed`` of each upload, the pictures that open put in MNIST form as one group."""
    results: list[np.ndarray | str] = []
    greys, opened = [], []
    for data in uploads:
        try:
            greys.append(preprocess.grey_pixels(preprocess.open_user_image(data, MAX_PIXELS)))
            opened.append(len(results))
            results.append("")
        except ValueError as error:
            results.append(str(error))
    for index, form in zip(opened, preprocess_many.forms_of_greys(greys), strict=True):
        try:
            results[index] = preprocess.refused_if_blank(form)
        except ValueError as error:
            results[index] = str(error)
    return results


def test_every_family_formed_as_a_group_comes_out_as_version_2_made_it(families):
    made = {name: varied_pictures.digest(iter(preprocessed_together(uploads))) for name, uploads in families.items()}
    assert made == DIGESTS_OF_VERSION_2


def test_a_group_of_one_size_comes_out_as_each_picture_alone():
    """Many pictures of one size, as a folder of scans: most take the group's shortcuts, every one the same."""
    rng = np.random.default_rng(11)
    images, _ = digits.mnist_test_digits(600)
    greys = []
    for index, digit in enumerate(images):
        picture = (255 - digit) if index % 3 else digit  # dark on light, and light on dark
        if index % 5 == 0:  # specks, a second stroke, a faint or flat picture, a lamp
            picture = picture.copy()
            picture[rng.integers(0, 28, 3), rng.integers(0, 28, 3)] = int(rng.integers(0, 256))
        if index % 7 == 0:
            picture = (picture * rng.uniform(0.05, 1) + rng.uniform(0, 120)).clip(0, 255).astype(np.uint8)
        if index % 11 == 0:
            picture = (picture * np.linspace(0.4, 1, 28)[np.newaxis, :]).astype(np.uint8)
        greys.append(picture)
    calls = 0
    one_by_one = preprocess.form_of_grey

    def counted(grey: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        return one_by_one(grey)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(preprocess, "form_of_grey", counted)
        together = preprocess_many.forms_of_greys(greys)
    assert calls < len(greys) // 4  # the group's shortcuts were taken
    for grey, form in zip(greys, together, strict=True):
        assert np.array_equal(form, one_by_one(grey))


def test_one_component_is_told_as_page_components_tell_it():
    rng = np.random.default_rng(3)
    for _ in range(200):
        count, height, width = int(rng.integers(1, 6)), int(rng.integers(1, 30)), int(rng.integers(1, 30))
        masks = rng.random((count, height, width)) < rng.uniform(0.02, 0.7)
        for mask in masks[: int(rng.integers(0, count + 1))]:
            mask[...] = pen_path((height, width), rng)
        boxes, pieces = preprocess_many._one_component_boxes(masks)
        for mask, box, piece in zip(masks, boxes, pieces, strict=True):
            components = page._components(mask)
            assert piece == min(len(components), 2)
            if piece == 1:
                assert tuple(box) == components[0][1:]


def test_the_light_is_left_alone_only_where_the_fit_would_leave_it():
    rng = np.random.default_rng(5)
    shortcuts = 0
    for _ in range(3000):
        height, width = (int(side) for side in rng.integers(3, 80, 2))
        pixels = np.full((height, width), int(rng.integers(0, 256)), dtype=np.uint8)
        rows, cols = np.mgrid[0:height, 0:width] / max(height, width)
        slope = rng.uniform(-1, 1, 3) * rng.choice([0, 10, 20, 40, 120])  # some near the thresholds
        pixels = np.clip(pixels + slope[0] * rows + slope[1] * cols + slope[2] * rows * cols, 0, 255)
        pixels = (pixels + rng.normal(0, rng.choice([0, 1, 5]), pixels.shape)).clip(0, 255).astype(np.uint8)
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]).astype(np.float64)
        full = page._light_divided_out(pixels, border)
        if page._plainly_even(border, height, width):
            shortcuts += 1
            assert full is pixels
        assert np.array_equal(page.evenly_lit(pixels), full)
    assert 500 < shortcuts < 2900  # both ways taken


def flood_filled_components(mask: np.ndarray) -> list[tuple[int, int, int, int, int]]:
    """The plainest labelling, to check ``page._components`` by: a flood fill from each unlabelled pixel in
    reading order, so components come in the order of their first pixel, as ``_components`` lists them."""
    seen = np.zeros(mask.shape, dtype=bool)
    found = []
    for row, col in zip(*np.nonzero(mask), strict=True):
        if seen[row, col]:
            continue
        seen[row, col] = True
        stack, pixels = [(row, col)], []
        while stack:
            r, c = stack.pop()
            pixels.append((r, c))
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    nr, nc = r + dr, c + dc
                    inside = 0 <= nr < mask.shape[0] and 0 <= nc < mask.shape[1]
                    if inside and mask[nr, nc] and not seen[nr, nc]:
                        seen[nr, nc] = True
                        stack.append((nr, nc))
        rows, cols = zip(*pixels, strict=True)
        found.append((len(pixels), min(rows), max(rows) + 1, min(cols), max(cols) + 1))
    return found


def pen_path(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A random pen's trace: one component, or a few where the pen lifted."""
    mask = np.zeros(shape, dtype=bool)
    row, col = (int(rng.integers(side)) for side in shape)
    for _ in range(int(rng.integers(1, 200))):
        mask[row, col] = True
        if rng.random() < 0.02:
            row, col = (int(rng.integers(side)) for side in shape)
        row = min(max(row + int(rng.integers(-1, 2)), 0), shape[0] - 1)
        col = min(max(col + int(rng.integers(-1, 2)), 0), shape[1] - 1)
    return mask


def test_components_are_the_flood_fills_in_reading_order():
    rng = np.random.default_rng(7)
    for _ in range(600):
        shape = (int(rng.integers(1, 40)), int(rng.integers(1, 40)))
        mask = rng.random(shape) < rng.uniform(0.02, 0.7)
        if rng.random() < 0.3:  # long strokes that join runs far apart
            mask[int(rng.integers(shape[0])), :] = True
        if rng.random() < 0.5:  # a pen's path instead: one component, or a few
            mask = pen_path(shape, rng)
        assert page._components(mask) == [
            tuple(int(value) for value in component) for component in flood_filled_components(mask)
        ]
