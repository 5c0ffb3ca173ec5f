"""Batched inference behind one interface, with a choice of runtime.

``litert`` (default) runs the ``.tflite`` file exported beside the Keras model at training
time: faster than TensorFlow on a CPU and a worker a fraction of the size (the benchmark's
``models`` section measures both). ``tensorflow`` runs the ``.keras`` file itself.
Training checks that both give the same labels on the whole test set (see the model card).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from shared.config import RUNTIMES
from shared.digits import INPUT_SHAPE, NUM_CLASSES, to_model_input
from shared.models.files import litert_path

# Larger batches run as slices of this size, whose activations stay in the CPU's cache.
LITERT_BATCH = 64
# A batch runs on the interpreter of the next power of two (1, 2, 4, ... LITERT_BATCH), zero-padded:
# seven interpreters, made once each, serve every size. Making an interpreter costs far more than
# inferring a padded image, and upload micro-batches come in every size up to UPLOAD_MAX_BATCH.


class Predictor(Protocol):
    def predict_batch(self, images: np.ndarray) -> np.ndarray:
        """uint8 images (N, 28, 28) -> float32 probabilities (N, 10)."""
        ...


class LiteRTPredictor:
    def __init__(self, model_file: Path | bytes, threads: int) -> None:
        """``model_file``: a ``.tflite`` file, or its bytes (as the model registry stores them)."""
        from ai_edge_litert.interpreter import Interpreter

        self._model_content = model_file if isinstance(model_file, bytes) else Path(model_file).read_bytes()
        self._threads = max(1, threads)
        self._interpreter_class = Interpreter
        self._by_batch_size: dict[int, object] = {}

    def _interpreter_for(self, batch_size: int):
        interpreter = self._by_batch_size.get(batch_size)
        if interpreter is None:
            interpreter = self._interpreter_class(model_content=self._model_content, num_threads=self._threads)
            interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], [batch_size, *INPUT_SHAPE])
            interpreter.allocate_tensors()
            self._by_batch_size[batch_size] = interpreter
        return interpreter

    def predict_batch(self, images: np.ndarray) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, NUM_CLASSES), dtype=np.float32)
        slices = [images[start : start + LITERT_BATCH] for start in range(0, len(images), LITERT_BATCH)]
        return np.concatenate([self._invoke(part) for part in slices])

    def _invoke(self, images: np.ndarray) -> np.ndarray:
        count, size = len(images), padded_size(len(images))
        if size != count:
            images = np.concatenate([images, np.zeros((size - count, *images.shape[1:]), dtype=images.dtype)])
        interpreter = self._interpreter_for(size)
        input_details = interpreter.get_input_details()[0]
        interpreter.set_tensor(input_details["index"], model_input_for(input_details, images))
        interpreter.invoke()
        probabilities = model_output_from(interpreter.get_output_details()[0], interpreter)[:count]
        if input_details["dtype"] != np.float32:
            # A full-integer model's softmax is int8 (steps of 1/256) even when its output is
            # dequantised: rescale so that stored probabilities still sum to 1.
            probabilities /= np.maximum(probabilities.sum(axis=1, keepdims=True), np.float32(1e-6))
        return probabilities


def padded_size(count: int) -> int:
    """The batch size a slice of ``count`` images (1 to LITERT_BATCH) runs at: the next power of two."""
    return 1 << (count - 1).bit_length()


def model_input_for(details: dict, images: np.ndarray) -> np.ndarray:
    """The input tensor for a float model, or for a full-integer one in its own quantisation.

    An int8 export calibrated on [0, 1] inputs takes scale 1/255: the stored pixels as they
    are (uint8, zero point 0) or with their top bit flipped (int8, zero point -128).
    """
    dtype = details["dtype"]
    if dtype == np.float32:
        return to_model_input(images)
    scale, zero_point = details["quantization"]
    if abs(scale * 255.0 - 1.0) < 1e-6:
        if dtype == np.uint8 and zero_point == 0:
            return images.reshape((-1, *INPUT_SHAPE))
        if dtype == np.int8 and zero_point == -128:  # pixel - 128 is the pixel with its top bit flipped
            return (images ^ np.uint8(0x80)).view(np.int8).reshape((-1, *INPUT_SHAPE))
    info = np.iinfo(dtype)
    quantised = np.round(to_model_input(images) / scale + zero_point)
    return np.clip(quantised, info.min, info.max).astype(dtype)


def model_output_from(details: dict, interpreter) -> np.ndarray:
    """Probabilities as float32, dequantised when the model's output is integer."""
    output = interpreter.get_tensor(details["index"])
    if output.dtype == np.float32:
        return output.copy()
    scale, zero_point = details["quantization"]
    return ((output.astype(np.float32) - zero_point) * scale).astype(np.float32)


def load_predictor(model_path: Path, runtime: str, threads: int) -> Predictor:
    """The predictor for a runtime; only ``tensorflow`` imports TensorFlow."""
    if runtime == "litert":
        tflite_file = litert_path(model_path)
        if not tflite_file.exists():
            raise ValueError(
                f"{tflite_file} does not exist: train with python -m shared.training.train,"
                " or set MODEL_RUNTIME=tensorflow"
            )
        return LiteRTPredictor(tflite_file, threads)
    if runtime == "tensorflow":
        from shared.models import keras_runtime

        keras_runtime.configure_threads(threads)
        return keras_runtime.KerasPredictor(keras_runtime.load_model(model_path))
    raise ValueError(f"MODEL_RUNTIME must be one of {RUNTIMES}, got {runtime!r}")
