"""Colours for the confusion matrix, so confused digit pairs stand out at a glance."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

# Square root lifts small shares, so a confusion of a few percent is still clearly visible.
CORRECT_HUE = 145  # green
WRONG_HUE = 0  # red
LIGHTNESS_EMPTY, LIGHTNESS_FULL = 98, 40


@dataclasses.dataclass(frozen=True)
class Cell:
    count: int
    share: float  # of the true label's row
    colour: str
    dark: bool  # the text on it needs to be light


def heatmap(confusion: np.ndarray) -> list[list[Cell]]:
    """Row-normalised cells: green shades on the diagonal, red shades where one digit is taken for another."""
    rows = []
    for true_label, row in enumerate(confusion):
        total = int(row.sum())
        cells = []
        for predicted_label, count in enumerate(row):
            share = int(count) / total if total else 0.0
            strength = math.sqrt(share)
            hue = CORRECT_HUE if predicted_label == true_label else WRONG_HUE
            lightness = round(LIGHTNESS_EMPTY - (LIGHTNESS_EMPTY - LIGHTNESS_FULL) * strength)
            cells.append(Cell(int(count), share, f"hsl({hue} 70% {lightness}%)", strength > 0.6))
        rows.append(cells)
    return rows
