"""Single uploads: latency from request to stored prediction, idle and under a bulk job; memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def run(env: dict[str, str], image_ids: list[int], images: np.ndarray, log_dir: Path) -> list[dict[str, Any]]:
    return []


def table(rows: list[dict[str, Any]]) -> list[str]:
    return []
