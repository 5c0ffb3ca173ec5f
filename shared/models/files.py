"""The model's files and which version they are, readable without importing TensorFlow.

The version is derived from the model file's bytes, so two workers with the same file
agree on it and a retrained model never shares a version with the old one.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any


@functools.cache
def model_version(model_path: Path) -> str:
    """``<file stem>-<first 12 hex digits of its SHA-256>``, e.g. ``mnist_cnn-1a2b3c4d5e6f``."""
    path = Path(model_path)
    if not path.exists():
        raise ValueError(f"model file {path} does not exist (train one with: python -m shared.training.train)")
    return version_of(path.stem, path.read_bytes())


def version_of(stem: str, keras_bytes: bytes) -> str:
    """The version of a model file named ``<stem>.keras`` with these bytes (what ``model_version`` reads)."""
    return f"{stem}-{hashlib.sha256(keras_bytes).hexdigest()[:12]}"


def litert_path(model_path: Path) -> Path:
    """Where training writes the LiteRT export of a Keras model."""
    return Path(model_path).with_suffix(".tflite")


def int8_path(model_path: Path) -> Path:
    """Where training writes the full-integer (int8) LiteRT export."""
    return Path(model_path).with_suffix(".int8.tflite")


def model_card_path(model_path: Path) -> Path:
    """The JSON card written beside the model by the training command."""
    return Path(model_path).with_suffix(".json")


def read_model_card(model_path: Path) -> dict[str, Any]:
    card = model_card_path(model_path)
    return json.loads(card.read_text()) if card.exists() else {}
