"""The CNN of the Keras ``mnist_convnet`` example, its files, and inference with TensorFlow.

Only training and the ``tensorflow`` runtime import this module: it pulls in TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from shared.digits import INPUT_SHAPE, NUM_CLASSES, to_model_input
from shared.model_info import litert_path


def build_model() -> keras.Model:
    """Conv 32 -> pool -> Conv 64 -> pool -> dropout -> dense 10: 34,826 parameters."""
    return keras.Sequential(
        [
            keras.Input(shape=INPUT_SHAPE),
            keras.layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
            keras.layers.MaxPooling2D(pool_size=(2, 2)),
            keras.layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
            keras.layers.MaxPooling2D(pool_size=(2, 2)),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(NUM_CLASSES, activation="softmax"),
        ],
        name="mnist_cnn",
    )


def configure_threads(threads: int) -> None:
    """Size TensorFlow's thread pools; must run before TensorFlow executes anything.

    With N worker processes on C cores, C // N threads each keeps the cores busy
    without the processes fighting over them.
    """
    if threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)


def save_model(model: keras.Model, path: Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    model.save(path)


def load_model(path: Path) -> keras.Model:
    return keras.models.load_model(path, compile=False)


def export_litert(model: keras.Model, model_path: Path) -> Path:
    """Write the LiteRT (``.tflite``) export beside the Keras file, for the default worker runtime."""
    target = litert_path(model_path)
    model.export(str(target), format="litert", verbose=False)
    return target


class KerasPredictor:
    """Batched inference through one compiled graph (``model.predict`` costs ~40 ms a call)."""

    def __init__(self, model: keras.Model) -> None:
        self._model = model
        self._forward = tf.function(
            lambda batch: model(batch, training=False),
            input_signature=[tf.TensorSpec(shape=(None, *INPUT_SHAPE), dtype=tf.float32)],
        )

    def predict_batch(self, images: np.ndarray) -> np.ndarray:
        """uint8 images (N, 28, 28) -> float32 probabilities (N, 10)."""
        if len(images) == 0:
            return np.zeros((0, NUM_CLASSES), dtype=np.float32)
        return self._forward(to_model_input(images)).numpy()
