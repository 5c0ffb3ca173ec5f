"""After training: calibrate, export float and int8 LiteRT files, prove them, write the card.

Split from the training loop so that an already trained model can be finalised again
(``python -m shared.training.train --export-only``) without training it again. Everything measured
here is measured on the exported files, the way the worker will run them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from shared.models.files import model_card_path
from shared.training import calibration

MIN_LITERT_AGREEMENT = 0.999
# The worker serves int8 when it is this close to the float model (points of accuracy).
INT8_MAX_ACCURACY_LOSS = 0.0005
CALIBRATION_SAMPLES = 1000
# The default low-confidence threshold: the smallest share of flagged images that catches
# at least this share of all errors on the validation split.
ERRORS_TO_CATCH = 0.5
DISTORT_BATCH = 1000

Split = tuple[np.ndarray, np.ndarray]


def finalise(
    model: Any, out: Path, card: dict[str, Any], validation: Split, test: Split, training_images: np.ndarray
) -> dict:
    """Fold the fitted temperature into the model, save it, export, verify, and write the card."""
    from shared.models.keras_runtime import KerasPredictor
    from shared.models.runtime import LiteRTPredictor
    from shared.training.model import export_int8, export_litert, fold_temperature, save_model

    uncalibrated = KerasPredictor(model)
    # The temperature is fitted on the validation digits as they are and once more distorted as training
    # distorts them: confidence must hold on other people's handwriting, not only on MNIST's own.
    fitted_on = with_distorted_copy(validation, card.get("seed", 0))
    summary = calibration.calibration_summary(
        (uncalibrated.predict_batch(fitted_on[0]), fitted_on[1]), (uncalibrated.predict_batch(test[0]), test[1])
    )
    summary["fitted_on"] = "validation split, as it is and distorted by the training augmentation"
    if summary["temperature"] != 1.0:
        fold_temperature(model, summary["temperature"])
    save_model(model, out)
    keras_test = KerasPredictor(model).predict_batch(test[0])

    threads = os.cpu_count() or 1
    float_file = export_litert(model, out)
    float_test = LiteRTPredictor(float_file, threads).predict_batch(test[0])
    agreement = _agreement(keras_test, float_test)
    if agreement < MIN_LITERT_AGREEMENT:
        raise RuntimeError(f"the LiteRT export agrees with Keras on only {agreement:.2%} of the test set")

    rng = np.random.default_rng(card.get("seed", 0))
    samples = training_images[
        rng.choice(len(training_images), min(CALIBRATION_SAMPLES, len(training_images)), replace=False)
    ]
    int8_file = export_int8(model, out, samples)
    int8_test = LiteRTPredictor(int8_file, threads).predict_batch(test[0])
    float_validation = LiteRTPredictor(float_file, threads).predict_batch(validation[0])

    thresholds = calibration.threshold_table(float_validation, validation[1])
    card.update(
        {
            "test_accuracy": _accuracy(float_test, test[1]),
            "keras_test_accuracy": _accuracy(keras_test, test[1]),
            "validation_accuracy": _accuracy(float_validation, validation[1]),
            "test_images": int(len(test[0])),
            "litert_file": float_file.name,
            "litert_label_agreement": agreement,
            "litert_max_abs_difference": float(np.abs(keras_test - float_test).max()),
            "int8": {
                "file": int8_file.name,
                "test_accuracy": _accuracy(int8_test, test[1]),
                "label_agreement": _agreement(float_test, int8_test),
                "calibration_images": int(len(samples)),
                "ece_test": round(calibration.expected_calibration_error(int8_test, test[1]), 5),
            },
            "calibration": summary,
            "temperature": summary["temperature"],
            "low_confidence_thresholds": thresholds,
            "low_confidence_threshold": _default_threshold(thresholds),
        }
    )
    card["int8"]["serve"] = card["test_accuracy"] - card["int8"]["test_accuracy"] <= INT8_MAX_ACCURACY_LOSS
    write_card(out, card)
    return card


def with_distorted_copy(split: Split, seed: int) -> Split:
    """``split`` followed by a copy of it distorted by the training augmentation (uint8 28x28 both)."""
    import tensorflow as tf

    from shared.digits import to_model_input
    from shared.training.augment import Augmentation, augment_batch

    tf.random.set_seed(seed)
    settings = Augmentation()
    distorted = [
        augment_batch(tf.constant(to_model_input(split[0][start : start + DISTORT_BATCH])), settings).numpy()
        for start in range(0, len(split[0]), DISTORT_BATCH)
    ]
    copy = np.clip(np.concatenate(distorted)[..., 0] * 255, 0, 255).round().astype(np.uint8)
    return np.concatenate([split[0], copy]), np.concatenate([split[1], split[1]])


def write_card(out: Path, card: dict[str, Any]) -> None:
    model_card_path(out).write_text(json.dumps(card, indent=2) + "\n")


def _default_threshold(thresholds: list[dict[str, float]]) -> float:
    for row in thresholds:
        if row["errors_caught"] >= ERRORS_TO_CATCH:
            return round(row["threshold"], 4)
    return round(thresholds[-1]["threshold"], 4)


def _accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return round(float((probabilities.argmax(axis=1) == labels).mean()), 5)


def _agreement(first: np.ndarray, second: np.ndarray) -> float:
    return float((first.argmax(axis=1) == second.argmax(axis=1)).mean())
