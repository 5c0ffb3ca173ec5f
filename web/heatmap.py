"""Shades for the confusion matrix (and for the difference of two jobs' ones), so confused digit pairs stand out at a
glance.

Each cell gets a CSS class (``heat-right-N`` on the diagonal, ``heat-wrong-N`` off it, N from 0 to
``STEPS``) rather than an inline colour, so the Content-Security-Policy needs no inline styles;
``css_rules`` writes the classes, and static/style.css holds its output.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

# Square root lifts small shares, so a confusion of a few percent is still clearly visible.
CORRECT_HUE = 145  # green
WRONG_HUE = 0  # red
LIGHTNESS_EMPTY, LIGHTNESS_FULL = 98, 40
STEPS = 10
DARK_FROM = 0.6  # strength beyond which the text on a cell needs to be light


@dataclasses.dataclass(frozen=True)
class Cell:
    count: int
    share: float  # of the true label's row
    shade: str  # the cell's CSS class
    dark: bool  # the text on it needs to be light


def shade(correct: bool, strength: float) -> str:
    return f"heat-{'right' if correct else 'wrong'}-{round(strength * STEPS)}"


def heatmap(confusion: np.ndarray) -> list[list[Cell]]:
    """Row-normalised cells: green shades on the diagonal, red shades where one digit is taken for another."""
    rows = []
    for true_label, row in enumerate(confusion):
        total = int(row.sum())
        cells = []
        for predicted_label, count in enumerate(row):
            share = int(count) / total if total else 0.0
            strength = math.sqrt(share)
            cells.append(Cell(int(count), share, shade(predicted_label == true_label, strength), strength > DARK_FROM))
        rows.append(cells)
    return rows


def difference_heatmap(difference: np.ndarray) -> list[list[Cell]]:
    """Cells of a confusion diff (B - A), shaded by what the change means rather than by its sign:
    green where B does better (more right on the diagonal, fewer of a mistake off it), red where
    worse, the strength relative to the largest change; ``share`` is that strength before the root."""
    largest = int(np.abs(difference).max()) if difference.size else 0
    rows = []
    for true_label, row in enumerate(difference):
        cells = []
        for predicted_label, change in enumerate(row):
            share = abs(int(change)) / largest if largest else 0.0
            strength = math.sqrt(share)
            better = (change > 0) == (predicted_label == true_label)
            cells.append(Cell(int(change), share, shade(better or change == 0, strength), strength > DARK_FROM))
        rows.append(cells)
    return rows


def css_rules() -> str:
    """The heat-map classes of static/style.css (tests/unit checks that the file holds exactly these)."""
    rules = []
    for name, hue in (("right", CORRECT_HUE), ("wrong", WRONG_HUE)):
        for step in range(STEPS + 1):
            lightness = round(LIGHTNESS_EMPTY - (LIGHTNESS_EMPTY - LIGHTNESS_FULL) * step / STEPS)
            rules.append(f".heatmap td.heat-{name}-{step} {{ background: hsl({hue} 70% {lightness}%); }}")
    return "\n".join(rules)
