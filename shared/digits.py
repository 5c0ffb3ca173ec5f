"""What a digit is to every part of the system: ten classes, a 28x28 grey image, id limits.

A leaf module: it imports nothing of the project, so the data layer, the model, the web and
the worker can all depend on it without depending on each other.
"""

from __future__ import annotations

import numpy as np

NUM_CLASSES = 10
IMAGE_SIDE = 28
IMAGE_SHAPE = (IMAGE_SIDE, IMAGE_SIDE)
INPUT_SHAPE = (IMAGE_SIDE, IMAGE_SIDE, 1)  # what the CNN takes: one grey channel
# The largest id a BIGSERIAL column holds: a larger one names no row, and PostgreSQL refuses it.
MAX_ROW_ID = 2**63 - 1
# The most image IDs one bulk task carries: a task's message stays small, and the column holding it is an INTEGER.
MAX_BATCH_SIZE = 100_000


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, 28, 28, 1) in [0, 1], as in training."""
    return (images.astype(np.float32) / 255.0).reshape((-1, *INPUT_SHAPE))
