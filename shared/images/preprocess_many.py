"""Many pictures to MNIST form at once, byte for byte as ``preprocess.to_mnist_form`` makes each one.

``producer ingest folder`` hands its pool processes hundreds of small pictures, mostly of one size
(scans cut to 28x28, say). For them, each step that ``to_mnist_form`` takes in a few dozen small
numpy calls per picture is taken here in as many calls for the whole group: the light check, the
histograms, Otsu's threshold, paper and ink levels, the ink masks, the search for ruling and the
one-component test of the digit's ink. The arithmetic is the same, element by element, so the
result is. A picture whose analysis would go further (light to divide out, a possible line, ink in
several pieces) or that is too large or too thin for the group's shortcut takes ``form_of_grey``,
the one-picture path, on its own; cropping, scaling and centring are that path's own code.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shared.digits import IMAGE_SHAPE, IMAGE_SIDE
from shared.images import page, preprocess

# Pictures up to this many pixels a side are analysed as a group: their ink needs no shrinking to
# find its components (page.COMPONENT_SIDE) and a group of them stays small in memory.
GROUP_SIDE = 64
_ASCENDING = np.arange(256)
_LEVEL_VALUES = _ASCENDING.astype(np.float64)


def groupable(grey: np.ndarray) -> bool:
    """Whether a picture with these ``grey_pixels`` is analysed in a group; the others, one at a time."""
    return 3 <= min(grey.shape) and max(grey.shape) <= GROUP_SIDE


def forms_of_greys(greys: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``preprocess.form_of_grey`` of each of ``greys`` (2-D uint8 arrays), in order."""
    forms: list[np.ndarray | None] = [None] * len(greys)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for index, grey in enumerate(greys):
        if groupable(grey):
            by_shape.setdefault(grey.shape, []).append(index)
        else:
            forms[index] = preprocess.form_of_grey(grey)
    for indexes in by_shape.values():
        for index, form in zip(indexes, _forms_of_group(np.stack([greys[i] for i in indexes])), strict=True):
            forms[index] = form if form is not None else preprocess.form_of_grey(greys[index])
    return [form for form in forms if form is not None]


def _forms_of_group(pixels: np.ndarray) -> list[np.ndarray | None]:
    """The MNIST form of each picture of ``pixels`` (N, H, W), or None where only the one-picture path may say."""
    count, height, width = pixels.shape
    size = height * width
    border = np.concatenate([pixels[:, 0], pixels[:, -1], pixels[:, :, 0], pixels[:, :, -1]], axis=1)
    # page.evenly_lit: leaves the picture as it is when the light is plainly even; else the one-picture path.
    sampled = border.astype(np.float64) @ page._border_fit(height, width).T @ page.GRID_TERMS.T
    low, high = sampled.min(axis=1), sampled.max(axis=1)
    unevenly_lit = ~(
        (high - low < page.LIGHT_RANGE - page.FIT_ROUNDING) | (low < page.LIGHT_DARKEST_PAPER - page.FIT_ROUNDING)
    )
    # preprocess._light_ink_levels, row by row of the (N, 256) histograms.
    flat = pixels.reshape(count, size).astype(np.int64) + 256 * np.arange(count)[:, np.newaxis]
    histograms = np.bincount(flat.ravel(), minlength=256 * count).reshape(count, 256)
    threshold = _otsu_thresholds(histograms)
    cumulative = histograms.cumsum(axis=1)
    light_count = size - np.take_along_axis(cumulative, threshold[:, np.newaxis], axis=1)[:, 0]
    no_ink = (light_count == 0) | (light_count == size)
    border_light = np.count_nonzero(border > threshold[:, np.newaxis], axis=1) / border.shape[1]
    decided = np.maximum(border_light, 1 - border_light) >= preprocess.BORDER_DECIDES
    inverted = np.where(decided, border_light > 0.5, light_count / size > 0.5)
    oriented = np.where(inverted[:, np.newaxis], histograms[:, ::-1], histograms).cumsum(axis=1)
    boundary = np.where(inverted, 254 - threshold, threshold)
    at_boundary = np.take_along_axis(oriented, boundary[:, np.newaxis], axis=1)
    paper = (oriented < 0.5 * at_boundary).sum(axis=1)  # preprocess._quantile of the levels up to the boundary
    tail = oriented - at_boundary  # the levels above it, counted from it
    beyond = _ASCENDING > boundary[:, np.newaxis]
    share = preprocess.INK_LEVEL_PERCENTILE / 100
    ink = np.argmax(beyond & (tail >= share * tail[:, -1:]), axis=1)
    no_ink |= ink - paper < preprocess.INK_THRESHOLD
    spread = np.where(no_ink, 1, ink - paper)  # any level but 0 where there is no ink: its table goes unused
    levels = np.where(inverted[:, np.newaxis], 255 - _ASCENDING, _ASCENDING)
    stretch = ((levels - paper[:, np.newaxis]) * (255.0 / spread)[:, np.newaxis]).clip(0, 255).round().astype(np.uint8)
    paper_level = np.where(inverted, 255 - paper, paper)[:, np.newaxis, np.newaxis]
    cut = np.where(inverted, 255 - (paper + preprocess.INK_THRESHOLD), paper + preprocess.INK_THRESHOLD)
    cut = cut[:, np.newaxis, np.newaxis]
    dark = inverted[:, np.newaxis, np.newaxis]
    inks = np.where(dark, pixels < cut, pixels > cut)
    marks = np.where(dark, pixels < paper_level - page.LINE_CONTRAST, pixels > paper_level + page.LINE_CONTRAST)
    # page.ruling finds no line unless some row or column of marks spans LINE_SPAN of the picture.
    row_share = np.add.reduce(marks, axis=2, dtype=np.float64) / width
    column_share = np.add.reduce(marks, axis=1, dtype=np.float64) / height
    maybe_ruled = (row_share >= page.LINE_SPAN).any(axis=1) | (column_share >= page.LINE_SPAN).any(axis=1)
    boxes, pieces = _one_component_boxes(inks)
    forms: list[np.ndarray | None] = []
    scaled: dict[int, np.ndarray] = {}
    for index in range(count):  # the order in which form_of_grey decides
        if unevenly_lit[index]:
            forms.append(None)
        elif no_ink[index]:
            forms.append(np.zeros(IMAGE_SHAPE, dtype=np.uint8))
        elif maybe_ruled[index] or pieces[index] > 1:
            forms.append(None)
        elif pieces[index] == 0:
            forms.append(np.zeros(IMAGE_SHAPE, dtype=np.uint8))
        else:
            top, bottom, left, right = boxes[index]
            scaled[index] = preprocess.scaled(stretch[index][pixels[index, top:bottom, left:right]])
            forms.append(None)
    for index, form in zip(scaled, _centred_by_mass(list(scaled.values())), strict=True):
        forms[index] = form
    return forms


def _centred_by_mass(digits: list[np.ndarray]) -> list[np.ndarray]:
    """``preprocess._centre_by_mass`` of each of ``digits`` (uint8, at most DIGIT_BOX_SIDE a side), with the same
    arithmetic: whole masses summed exactly, then one division each."""
    side = preprocess.DIGIT_BOX_SIDE
    padded = np.zeros((len(digits), side, side), dtype=np.uint8)  # zeros weigh nothing in the masses
    for index, digit in enumerate(digits):
        padded[index, : digit.shape[0], : digit.shape[1]] = digit
    row_mass = np.add.reduce(padded, axis=2, dtype=np.int64)
    col_mass = np.add.reduce(padded, axis=1, dtype=np.int64)
    total = np.add.reduce(row_mass, axis=1)
    weight = np.where(total > 0, total, 1)
    tops = np.round(IMAGE_SIDE / 2 - row_mass @ np.arange(side) / weight).astype(np.int64)
    lefts = np.round(IMAGE_SIDE / 2 - col_mass @ np.arange(side) / weight).astype(np.int64)
    fields = np.zeros((len(digits), *IMAGE_SHAPE), dtype=np.uint8)
    for index, digit in enumerate(digits):
        if total[index] > 0:
            height, width = digit.shape
            top = min(max(int(tops[index]), 0), IMAGE_SIDE - height)
            left = min(max(int(lefts[index]), 0), IMAGE_SIDE - width)
            fields[index, top : top + height, left : left + width] = digit
    return list(fields)


def _otsu_thresholds(histograms: np.ndarray) -> np.ndarray:
    """``preprocess.otsu_threshold`` of each row of ``histograms``, with the same arithmetic."""
    counts = histograms.astype(np.float64)
    dark_count = counts.cumsum(axis=1)
    light_count = dark_count[:, -1:] - dark_count
    dark_mass = (counts * _LEVEL_VALUES).cumsum(axis=1)
    light_mass = dark_mass[:, -1:] - dark_mass
    with np.errstate(divide="ignore", invalid="ignore"):
        between = dark_count * light_count * (dark_mass / dark_count - light_mass / light_count) ** 2
    between[np.isnan(between)] = -1.0
    return between.argmax(axis=1)


def _one_component_boxes(inks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(box as top, bottom, left, right; how many components, 2 standing for any more) of each mask of ``inks``
    (N, H, W), 8-connected as ``page._components`` joins them, for every mask at once.

    Each run of ink hangs from the first run of the row above that touches it, if any: following those links
    (pointer jumping) leads every run to the top of its tree, and the other touching pairs join trees. The
    component's label is its first run's index, the one run labelled by itself."""
    count, height, width = inks.shape
    edged = np.zeros((count, height, width + 2), dtype=np.int8)
    edged[:, :, 1:-1] = inks
    steps = edged[:, :, 1:] - edged[:, :, :-1]
    run_images, run_rows, run_starts = (steps == 1).nonzero()
    run_stops = (steps == -1).nonzero()[2]
    boxes = np.zeros((count, 4), dtype=np.int64)
    runs = len(run_rows)
    if runs == 0:
        return boxes, np.zeros(count, dtype=np.int64)
    # Rows of all masks in one sequence, a row apart, so that no run touches one of another mask.
    rows = run_images * (height + 1) + run_rows
    key_width = width + 2
    first_above = np.minimum((rows * key_width + run_stops).searchsorted((rows - 1) * key_width + run_starts), runs - 1)
    touching = (rows[first_above] == rows - 1) & (run_starts[first_above] <= run_stops)
    past_above = (rows * key_width + run_starts).searchsorted((rows - 1) * key_width + run_stops, side="right")
    tree = np.where(touching, first_above, np.arange(runs))
    while True:
        higher = tree[tree]
        if np.array_equal(higher, tree):
            break
        tree = higher
    # The touching pairs: each run with every run of the row above from its first touching one to past_above.
    pairs = np.where(touching, past_above - first_above, 0)
    below = np.repeat(np.arange(runs), pairs)
    above = first_above[below] + np.arange(len(below)) - np.repeat(pairs.cumsum() - pairs, pairs)
    top_below, top_above = tree[below], tree[above]
    joining = top_below != top_above
    top_below, top_above = top_below[joining], top_above[joining]
    label = np.arange(runs)
    while True:
        lowest = np.minimum(label[top_below], label[top_above])
        joined = label.copy()
        np.minimum.at(joined, top_below, lowest)
        np.minimum.at(joined, top_above, lowest)
        joined = joined[joined]
        if np.array_equal(joined, label):
            break
        label = joined
    firsts_of_components = label[tree] == np.arange(runs)
    pieces = np.minimum(np.bincount(run_images[firsts_of_components], minlength=count), 2)
    firsts = np.flatnonzero(np.concatenate([[True], run_images[1:] != run_images[:-1]]))
    owners = run_images[firsts]
    lasts = np.concatenate([firsts[1:], [runs]]) - 1
    boxes[owners, 0] = run_rows[firsts]
    boxes[owners, 1] = run_rows[lasts] + 1
    boxes[owners, 2] = np.minimum.reduceat(run_starts, firsts)
    boxes[owners, 3] = np.maximum.reduceat(run_stops, firsts)
    return boxes, pieces
