"""The optional ``MODEL_RUNTIME=tensorflow``: a saved Keras model served through TensorFlow.

Only a worker configured for it imports this module; LiteRT (``runtime``) is the default.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from shared.digits import INPUT_SHAPE, NUM_CLASSES, to_model_input


def configure_threads(threads: int) -> None:
    """Size TensorFlow's thread pools; must run before TensorFlow executes anything.

    With N worker processes on C cores, C // N threads each keeps the cores busy
    without the processes fighting over them.
    """
    if threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)


def load_model(path: Path) -> keras.Model:
    return keras.models.load_model(path, compile=False)


class KerasPredictor:
    """Batched inference through one compiled graph: ``model.predict`` has a large fixed cost per call."""

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
