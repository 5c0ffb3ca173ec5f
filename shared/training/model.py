"""The CNN: its layers, its temperature, and its exports to LiteRT (float and int8)."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from shared.digits import INPUT_SHAPE, NUM_CLASSES, to_model_input
from shared.models.files import int8_path, litert_path


def build_model(dropout: float = 0.3) -> keras.Model:
    """Space-to-depth stem, three batch-normalised 3x3 convolutions, dense 10: 105,738 parameters.

    Why this shape: on this CPU (AVX2, no VNNI) a convolution over a one-channel input is
    the slowest layer there is, and in int8 slower still (XNNPACK's int8 kernels want many
    input channels). Folding each 2x2 block of pixels into 4 channels first (lossless) lets
    every convolution see at least 4 channels and halves the resolution the costly layers
    run at, so the network holds three times the parameters of the Keras example's and
    still costs about what it did per image. Batch normalisation folds into the
    convolutions at export, so it costs nothing at inference.
    """
    side = INPUT_SHAPE[0] // 2
    inputs = keras.Input(shape=INPUT_SHAPE)
    x = keras.layers.Reshape((side, 2, side, 2))(inputs)
    x = keras.layers.Permute((1, 3, 2, 4))(x)
    x = keras.layers.Reshape((side, side, 4))(x)
    x = _convolution(x, 32)
    x = _convolution(x, 64)
    x = keras.layers.MaxPooling2D(pool_size=(2, 2))(x)
    x = _convolution(x, 128)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(dropout)(x)
    outputs = keras.layers.Dense(NUM_CLASSES, activation="softmax", name="classifier")(x)
    return keras.Model(inputs, outputs, name="mnist_cnn")


def _convolution(x: keras.KerasTensor, filters: int) -> keras.KerasTensor:
    x = keras.layers.Conv2D(filters, kernel_size=(3, 3), use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    return keras.layers.ReLU()(x)


def fold_temperature(model: keras.Model, temperature: float) -> None:
    """Divide the classifier's logits by T in its weights, so every export is calibrated.

    softmax(Wx + b) / T = softmax((W / T) x + b / T): no runtime change anywhere.
    """
    classifier = model.get_layer("classifier")
    kernel, bias = classifier.get_weights()
    classifier.set_weights([kernel / temperature, bias / temperature])


def save_model(model: keras.Model, path: Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    model.save(path)


def inference_graph(model: keras.Model) -> keras.Model:
    """The same network and weights, written with ops whose shapes do not depend on the batch.

    Keras' Reshape, Permute and Flatten export as SHAPE / STRIDED_SLICE / PACK ops that
    LiteRT's XNNPACK delegate cannot take, which cut the graph into several delegated parts
    with slow steps between them. ``space_to_depth`` is the stem's reshape-permute-reshape
    (the same channel order) and a reshape to ``[-1, features]`` is Flatten; the export check
    against Keras on the whole test set proves them equal.
    """
    inputs = keras.Input(shape=model.input_shape[1:])
    x = inputs
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    index = 0
    while index < len(layers):
        layer = layers[index]
        if _is_space_to_depth(layers[index : index + 3]):
            x = keras.layers.Lambda(lambda images: tf.nn.space_to_depth(images, 2))(x)
            index += 3
            continue
        if isinstance(layer, keras.layers.Flatten):
            features = int(np.prod(x.shape[1:]))
            x = keras.layers.Lambda(lambda tensor, size=features: tf.reshape(tensor, [-1, size]))(x)
        else:
            x = layer(x)
        index += 1
    return keras.Model(inputs, x, name=f"{model.name}_inference")


def _is_space_to_depth(layers: list[keras.layers.Layer]) -> bool:
    """build_model's stem: Reshape (s, 2, s, 2), Permute (1, 3, 2, 4), Reshape (s, s, 4)."""
    if len(layers) < 3:
        return False
    split, permute, merge = layers
    return (
        isinstance(split, keras.layers.Reshape)
        and len(split.target_shape) == 4
        and tuple(split.target_shape[1::2]) == (2, 2)
        and isinstance(permute, keras.layers.Permute)
        and tuple(permute.dims) == (1, 3, 2, 4)
        and isinstance(merge, keras.layers.Reshape)
        and tuple(merge.target_shape) == (split.target_shape[0], split.target_shape[2], 4)
    )


def export_litert(model: keras.Model, model_path: Path) -> Path:
    """Write the LiteRT (``.tflite``) export beside the Keras file, for the default worker runtime."""
    target = litert_path(model_path)
    inference_graph(model).export(str(target), format="litert", verbose=False)
    return target


def export_int8(model: keras.Model, model_path: Path, calibration_images: np.ndarray) -> Path:
    """Write a full-integer LiteRT export, its activation ranges calibrated on training images.

    The input is int8 with scale 1/255 and zero point -128 (XNNPACK takes int8, not uint8),
    so a stored pixel goes in as ``pixel - 128``; the output stays float32 so confidences
    keep their resolution below the softmax.
    """
    converter = tf.lite.TFLiteConverter.from_keras_model(inference_graph(model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    samples = to_model_input(calibration_images)
    converter.representative_dataset = lambda: ([sample[np.newaxis]] for sample in samples)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.float32
    target = int8_path(model_path)
    target.write_bytes(converter.convert())
    return target
