"""Training-time distortions of MNIST digits, so the model meets other people's handwriting.

Only the training command imports this (it needs TensorFlow). Each batch is distorted on
the fly in TensorFlow ops, vectorised over the batch, so augmentation costs a fraction of
the training step. What each distortion stands for:

- affine (rotation, scale, shear/slant, shift): writers slant, forms crop tightly;
- dilation / erosion: pens, markers and thin pencils;
- blur and down-/up-sampling: phone photos and low-resolution scans;
- faint ink: a light pen, or a scan with poor contrast.

The pictures users send go through ``to_mnist_form`` (crop, 20 px box, centre by mass)
before the model, so the distortions stay small: they model what is left after that step.
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf

SIDE = 28


@dataclasses.dataclass(frozen=True)
class Augmentation:
    max_rotation_degrees: float = 10.0
    scale_range: tuple[float, float] = (0.88, 1.1)
    max_shear: float = 0.2
    max_shift_pixels: float = 2.0
    thicken_share: float = 0.15
    thin_share: float = 0.08
    blur_share: float = 0.1
    low_resolution_share: float = 0.1
    faint_share: float = 0.08


def augment_batch(images: tf.Tensor, settings: Augmentation) -> tf.Tensor:
    """float32 (N, 28, 28, 1) in [0, 1] -> the same batch, each image distorted at random."""
    images = _random_affine(images, settings)
    images = _some(images, settings.thicken_share, _dilate)
    images = _some(images, settings.thin_share, _erode)
    images = _some(images, settings.blur_share, _blur)
    images = _some(images, settings.low_resolution_share, _down_and_up)
    images = _some(images, settings.faint_share, _faint)
    return tf.clip_by_value(images, 0.0, 1.0)


def _some(images: tf.Tensor, share: float, distortion) -> tf.Tensor:
    """Apply ``distortion`` to a random ``share`` of the batch (computed for all: cheap, and no gathers)."""
    if share <= 0:
        return images
    chosen = tf.random.uniform([tf.shape(images)[0], 1, 1, 1]) < share
    return tf.where(chosen, distortion(images), images)


def _random_affine(images: tf.Tensor, settings: Augmentation) -> tf.Tensor:
    count = tf.shape(images)[0]
    angle = tf.random.uniform([count], -1.0, 1.0) * settings.max_rotation_degrees * math.pi / 180
    scale = tf.random.uniform([count], *settings.scale_range)
    shear = tf.random.uniform([count], -settings.max_shear, settings.max_shear)
    shift_x = tf.random.uniform([count], -settings.max_shift_pixels, settings.max_shift_pixels)
    shift_y = tf.random.uniform([count], -settings.max_shift_pixels, settings.max_shift_pixels)
    # The transform maps output pixel (x, y) to the input pixel it reads: the inverse of
    # "scale, shear, rotate about the centre, then shift".
    cos, sin = tf.cos(angle), tf.sin(angle)
    a0, a1 = cos / scale, (sin + shear * cos) / scale
    b0, b1 = -sin / scale, (cos - shear * sin) / scale
    centre = (SIDE - 1) / 2
    a2 = centre - a0 * (centre + shift_x) - a1 * (centre + shift_y)
    b2 = centre - b0 * (centre + shift_x) - b1 * (centre + shift_y)
    zeros = tf.zeros_like(a0)
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=[SIDE, SIDE],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )


def _dilate(images: tf.Tensor) -> tf.Tensor:
    return tf.nn.max_pool2d(images, ksize=2, strides=1, padding="SAME")


def _erode(images: tf.Tensor) -> tf.Tensor:
    # A 2x2 erosion keeps MNIST's 2-3 px strokes; a lighter pen is what it stands for.
    return tf.maximum(-tf.nn.max_pool2d(-images, ksize=2, strides=1, padding="SAME"), images * 0.35)


def _blur(images: tf.Tensor) -> tf.Tensor:
    sigma = tf.random.uniform([], 0.6, 1.6)
    offsets = tf.range(-3, 4, dtype=tf.float32)
    weights = tf.exp(-(offsets**2) / (2 * sigma**2))
    weights = weights / tf.reduce_sum(weights)
    kernel = weights[:, tf.newaxis] * weights[tf.newaxis, :]
    blurred = tf.nn.conv2d(images, kernel[:, :, tf.newaxis, tf.newaxis], strides=1, padding="SAME")
    return blurred / tf.maximum(tf.reduce_max(blurred, axis=[1, 2, 3], keepdims=True), 1e-3)


def _down_and_up(images: tf.Tensor) -> tf.Tensor:
    low = tf.random.shuffle(tf.constant([8, 10, 12, 14, 16]))[0]
    small = tf.image.resize(images, [low, low], method="area", antialias=True)
    restored = tf.image.resize(small, [SIDE, SIDE], method="bilinear")
    return restored / tf.maximum(tf.reduce_max(restored, axis=[1, 2, 3], keepdims=True), 1e-3)


def _faint(images: tf.Tensor) -> tf.Tensor:
    return images * tf.random.uniform([tf.shape(images)[0], 1, 1, 1], 0.45, 0.9)
