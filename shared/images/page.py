"""Where the digit is on a picture of a page: the page's light evened out, printed ruling found, and the box of
the digit's own ink rather than of every mark on the page. Used by ``preprocess.to_mnist_form``; numpy only,
as the web's image carries no scipy.
"""

from __future__ import annotations

import functools

import numpy as np

# Printed ruling (lined and squared paper): rows (columns) where marks fainter than ink still cross at least
# LINE_SPAN of the picture, in runs no thicker than LINE_THICKNESS of its height (width). A written bar is
# neither that straight nor that thin for its length, so a digit's own strokes are not taken for ruling.
LINE_CONTRAST = 12  # grey levels beyond the paper's that a printed line shows, however light its colour
LINE_SPAN = 0.9
LINE_THICKNESS = 0.03
# Uneven light (a phone photo of a page): a smooth surface fitted to the border's grey levels, divided out when it
# spans at least LIGHT_RANGE levels and the border lies on it (a median miss of at most LIGHT_FIT levels,
# LIGHT_OUTLIERS of it further than LIGHT_MISS levels off: a digit that crosses the border leaves it alone).
LIGHT_RANGE = 20
LIGHT_FIT = 4.0
LIGHT_OUTLIERS = 0.1
LIGHT_MISS = 30
LIGHT_GRID = 9  # the fitted light is judged at this many points a side
LIGHT_DARKEST_PAPER = 64  # below this the paper is a dark board, and dividing would only raise its noise
# Grey levels by which the fit's arithmetic (a pseudo-inverse rather than lstsq, both near 1e-12 of a level
# apart for any border) could move the fitted light: a picture this far inside a threshold is judged without
# the fit.
FIT_ROUNDING = 0.01
# Components are found on the ink mask shrunk (any ink in a block) to at most this many pixels a side.
COMPONENT_SIDE = 128
# The digit is its largest component, with the others that are big (this share of its area) or near it
# (within this share of the digit's longer side): a broken stroke is kept, a speck of dust far off is not.
COMPONENT_KEEP_AREA = 0.1
COMPONENT_NEAR = 0.15


def evenly_lit(pixels: np.ndarray) -> np.ndarray:
    """``pixels`` with light that falls off across the paper divided out; as they are when the paper is evenly lit.

    Otherwise one threshold splits the page into its bright and its dim side, not ink from paper. The light
    is judged on the border alone, where a digit written on a page seldom is.
    """
    height, width = pixels.shape
    if min(height, width) < 3:
        return pixels
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]).astype(np.float64)
    if _plainly_even(border, height, width):
        return pixels
    return _light_divided_out(pixels, border)


def _plainly_even(border: np.ndarray, height: int, width: int) -> bool:
    """Whether the light fitted to ``border`` spans too few levels, or is too dark, to be divided out, by a
    margin that no rounding of the fit can cross: then ``_light_divided_out`` would return the pixels as
    they are. A cached projection makes it one product, where the fit itself costs most of a small picture's
    preprocessing."""
    sampled = GRID_TERMS @ (_border_fit(height, width) @ border)
    low, high = sampled.min(), sampled.max()
    return bool(high - low < LIGHT_RANGE - FIT_ROUNDING or low < LIGHT_DARKEST_PAPER - FIT_ROUNDING)


@functools.lru_cache(maxsize=64)
def _border_fit(height: int, width: int) -> np.ndarray:
    """The least-squares map from a picture's border (as ``evenly_lit`` lists it) to the light's coefficients."""
    return np.linalg.pinv(_light_terms(*_border_points(height, width)))


def _border_points(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, column), both 0..1, of each border pixel: top row, bottom row, left column, right column."""
    rows = np.concatenate([np.zeros(width), np.ones(width), np.arange(height) / height, np.arange(height) / height])
    cols = np.concatenate([np.arange(width) / width, np.arange(width) / width, np.zeros(height), np.ones(height)])
    return rows, cols


def _light_divided_out(pixels: np.ndarray, border: np.ndarray) -> np.ndarray:
    """``evenly_lit``'s fit of the light to the border, and its division when the fit says the light is uneven."""
    height, width = pixels.shape
    rows, cols = _border_points(height, width)
    coefficients, *_ = np.linalg.lstsq(_light_terms(rows, cols), border, rcond=None)
    miss = np.abs(_light_terms(rows, cols) @ coefficients - border)
    sampled = GRID_TERMS @ coefficients
    if (
        sampled.max() - sampled.min() < LIGHT_RANGE
        or sampled.min() < LIGHT_DARKEST_PAPER
        or np.median(miss) > LIGHT_FIT
        or (miss > LIGHT_MISS).mean() > LIGHT_OUTLIERS
    ):
        return pixels
    # The surface is built from a column and a row of the picture's size, so that only two full-size
    # float32 planes are held at once (the light, then the gain in its place), whatever the picture.
    weights = coefficients.astype(np.float32)
    row_at = (np.arange(height, dtype=np.float32) / height)[:, np.newaxis]
    col_at = (np.arange(width, dtype=np.float32) / width)[np.newaxis, :]
    light = np.multiply(row_at, col_at * weights[5])
    light += weights[0] + weights[1] * row_at + weights[3] * row_at * row_at
    light += weights[2] * col_at + weights[4] * col_at * col_at
    np.maximum(light, np.float32(1), out=light)
    np.divide(np.float32(sampled.max()), light, out=light)
    light *= pixels
    return np.clip(light, 0, 255, out=light).round(out=light).astype(np.uint8)


def _light_terms(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The terms of a quadratic surface at points (row, column), both 0..1, one row of terms per point:
    a lamp's slope and a lens' vignette."""
    return np.stack([np.ones_like(rows), rows, cols, rows * rows, cols * cols, rows * cols], axis=1)


_GRID = np.linspace(0, 1, LIGHT_GRID)
GRID_TERMS = _light_terms(np.repeat(_GRID, LIGHT_GRID), np.tile(_GRID, LIGHT_GRID))  # where the fitted light is judged


def ink_box(ink: np.ndarray) -> tuple[slice, slice] | None:
    """The rows and columns that hold ink, as slices of the picture; None when none does."""
    rows, columns = np.logical_or.reduce(ink, axis=1).nonzero()[0], np.logical_or.reduce(ink, axis=0).nonzero()[0]
    if rows.size == 0:
        return None
    return slice(rows[0], rows[-1] + 1), slice(columns[0], columns[-1] + 1)


def ruling(marks: np.ndarray, ink: np.ndarray) -> np.ndarray | None:
    """The pixels of printed lines across the whole picture (lined or squared paper), less where a stroke crosses
    them; None when there are none. Ruling left in would set the digit's box to the page's."""
    bands = []  # (axis, first, last): a line with its faint edges
    for axis in (0, 1):  # lines along rows, then along columns
        along = marks if axis == 0 else marks.T
        share = np.add.reduce(along, axis=1, dtype=np.float64) / along.shape[1]  # each line's mean, as .mean() has it
        crossed = share >= LINE_SPAN
        if not crossed.any():  # most pictures: no line, and no runs to look for
            continue
        thickest = max(2, round(LINE_THICKNESS * len(share)))
        for start, stop in _runs(crossed):
            if stop - start <= thickest:
                bands.append((axis, max(start - 1, 0), min(stop + 1, len(share))))
    if not bands:
        return None
    lines = np.zeros(marks.shape, dtype=bool)
    for axis, first, last in bands:
        (lines[first:last] if axis == 0 else lines[:, first:last].T)[...] = True
    # A stroke crosses a line where it has ink just beyond both sides; squared paper's other lines are not strokes.
    strokes = ink & ~lines
    ruling = np.zeros(marks.shape, dtype=bool)
    for axis, first, last in bands:
        along = strokes if axis == 0 else strokes.T
        crossing = _widened(along[max(first - 1, 0)] | along[min(last, along.shape[0] - 1)], last - first)
        band = ruling[first:last] if axis == 0 else ruling[:, first:last].T
        band |= ~crossing
    if not (ink & ~ruling).any():  # nothing but lines: better read them than nothing
        return None
    return ruling


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of True in a 1-D boolean array."""
    edges = np.flatnonzero(np.diff(np.concatenate([[False], flags, [False]]).astype(np.int8)))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def _widened(flags: np.ndarray, reach: int) -> np.ndarray:
    """``flags`` with every True spread ``reach`` places either way."""
    counts = np.cumsum(np.concatenate([[0], flags.astype(np.int32)]))
    index = np.arange(len(flags))
    return counts[np.minimum(index + reach + 1, len(flags))] - counts[np.maximum(index - reach, 0)] > 0


def digit_box(ink: np.ndarray) -> tuple[slice, slice] | None:
    """The box of the digit's ink: its largest connected component and those big or near enough to be part of it,
    so that specks and smudges far from the digit do not widen the box. None without ink."""
    factor = -(-max(ink.shape) // COMPONENT_SIDE)
    blocks = ink if factor == 1 else _blocks(ink, factor)
    components = _components(blocks)
    if not components:
        return None
    components.sort(key=lambda component: -component[0])
    kept = [components[0]]
    top, bottom, left, right = components[0][1:]
    rest = components[1:]
    changed = True
    while changed:
        changed = False
        reach = COMPONENT_NEAR * max(bottom - top, right - left)
        for component in list(rest):
            area, c_top, c_bottom, c_left, c_right = component
            gap = max(c_top - bottom, top - c_bottom, c_left - right, left - c_right, 0)
            if area >= COMPONENT_KEEP_AREA * components[0][0] or gap <= reach:
                kept.append(component)
                rest.remove(component)
                top, bottom = min(top, c_top), max(bottom, c_bottom)
                left, right = min(left, c_left), max(right, c_right)
                changed = True
    # Back to the picture's pixels: the blocks' box, tightened to the ink inside it.
    region = (slice(top * factor, bottom * factor), slice(left * factor, right * factor))
    if factor == 1:  # the components' own box: ink on each of its edges already
        return region
    inner = ink_box(ink[region])
    if inner is None:
        return None
    return (
        slice(region[0].start + inner[0].start, region[0].start + inner[0].stop),
        slice(region[1].start + inner[1].start, region[1].start + inner[1].stop),
    )


def _blocks(ink: np.ndarray, factor: int) -> np.ndarray:
    """``ink`` shrunk ``factor`` times each way: a block is ink when any of its pixels is."""
    height, width = -(-ink.shape[0] // factor), -(-ink.shape[1] // factor)
    padded = np.zeros((height * factor, width * factor), dtype=bool)
    padded[: ink.shape[0], : ink.shape[1]] = ink
    # Each band's rows, then each block's columns, joined a whole strided slice at a time: any() over
    # the two reshaped block axes goes element by element, and on a photo-sized picture that was the
    # dearest step of its preprocessing.
    rows = padded[0::factor].copy()
    for offset in range(1, factor):
        rows |= padded[offset::factor]
    blocks = rows[:, 0::factor].copy()
    for offset in range(1, factor):
        blocks |= rows[:, offset::factor]
    return blocks


def _components(mask: np.ndarray) -> list[tuple[int, int, int, int, int]]:
    """8-connected components of a small boolean mask, each as (area, top, bottom, left, right), bottom and
    right exclusive. Runs of each row are joined with the overlapping runs of the row above (union-find), so
    the cost follows the runs, not the pixels, and needs nothing beyond numpy."""
    # Every row's runs at once, in reading order: where the row steps onto ink and where it steps off.
    edged = np.zeros((mask.shape[0], mask.shape[1] + 2), dtype=np.int8)
    edged[:, 1:-1] = mask
    steps = edged[:, 1:] - edged[:, :-1]
    run_rows, run_starts = (steps == 1).nonzero()
    run_stops = (steps == -1).nonzero()[1]
    if _hang_from_the_first(run_rows, run_starts, run_stops, mask.shape[1] + 2):
        area = int(np.add.reduce(run_stops - run_starts))
        return [(area, int(run_rows[0]), int(run_rows[-1]) + 1, int(run_starts.min()), int(run_stops.max()))]
    rows, starts, stops = run_rows.tolist(), run_starts.tolist(), run_stops.tolist()
    parent = list(range(len(rows)))

    def root(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    above_first = above_stop = first = 0  # the runs of the row above: [above_first, above_stop); this row's from first
    current_row = -1
    for index, row in enumerate(rows):
        if row != current_row:
            above_first, above_stop = (first, index) if row == current_row + 1 else (index, index)
            first, current_row = index, row
        start, stop = starts[index], stops[index]
        for other in range(above_first, above_stop):
            if starts[other] <= stop and start <= stops[other]:  # touching, diagonals included
                parent[root(other)] = root(index)
    boxes: dict[int, list[int]] = {}
    for index, row in enumerate(rows):
        start, stop = starts[index], stops[index]
        box = boxes.get(root(index))
        if box is None:
            boxes[root(index)] = [stop - start, row, row + 1, start, stop]
            continue
        box[0] += stop - start
        box[2] = row + 1  # runs come in reading order: the row only grows, the top is the first run's
        box[3], box[4] = min(box[3], start), max(box[4], stop)
    return [(area, top, bottom, left, right) for area, top, bottom, left, right in boxes.values()]


def _hang_from_the_first(rows: np.ndarray, starts: np.ndarray, stops: np.ndarray, key_width: int) -> bool:
    """Whether every run but the first touches a run of the row above: then each hangs, row by row, from the
    first, and the mask is one component (most digits), found with no run joined one by one.

    Runs of a row are disjoint and in order, so the run of the row above that could touch a run is the first
    there that stops at or after the run's start: one search in the runs' stops keyed by row."""
    if len(rows) < 2:
        return len(rows) == 1
    stop_keys = rows * key_width + stops
    above = np.minimum(stop_keys.searchsorted((rows - 1) * key_width + starts), len(rows) - 1)
    touching = (rows[above] == rows - 1) & (starts[above] <= stops)
    return int(np.count_nonzero(touching)) == len(rows) - 1
