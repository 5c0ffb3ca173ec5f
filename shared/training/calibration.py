"""How far the model's confidence can be trusted, and a temperature that makes it trustworthy.

Pure numpy, so the training command, the benchmarks and the tests need neither TensorFlow nor
scipy. Confidence is the largest probability of a row; a model is calibrated when, among the
images it gives confidence ~0.9, about 90 % are right. The expected calibration error (ECE)
measures the gap in equal-width bins (Guo et al., 2017, "On Calibration of Modern Neural
Networks"); temperature scaling divides the logits by one number T fitted on held-out data
(T > 1 softens an over-confident model) and never changes which class is predicted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

ECE_BINS = 15
FLAG_SHARES = (0.005, 0.01, 0.02, 0.05)
# Temperatures searched: 1/20 to 20, far beyond what a trained CNN needs (about 0.5 to 3).
MIN_INVERSE_TEMPERATURE, MAX_INVERSE_TEMPERATURE = 0.05, 20.0
SEARCH_TOLERANCE = 1e-5
SMALLEST_PROBABILITY = 1e-30  # float32 softmax rounds tiny probabilities to 0; log(0) would be -inf
GOLDEN = (math.sqrt(5) - 1) / 2


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Sum over equal-width confidence bins (lower, upper] of (share of images) x |accuracy - mean confidence|."""
    probabilities, labels = _checked(probabilities, labels)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    which = np.searchsorted(np.linspace(0.0, 1.0, bins + 1)[1:-1], confidence, side="left")
    gap = np.bincount(which, weights=correct - confidence, minlength=bins)
    # |sum of (correct - confidence)| over a bin is its count x |accuracy - mean confidence|.
    return float(np.abs(gap).sum() / len(labels))


def as_logits(probabilities_or_logits: np.ndarray) -> np.ndarray:
    """Logits (up to a constant per row, which softmax ignores): log of probabilities, or the input itself.

    Rows that are all non-negative and sum to 1 are taken as probabilities.
    """
    scores = np.asarray(probabilities_or_logits, dtype=np.float64)
    if np.all(scores >= 0) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3):
        return np.log(np.maximum(scores, SMALLEST_PROBABILITY))
    return scores


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean of -log softmax(logits)[label], computed without overflow."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_normaliser = np.log(np.exp(shifted).sum(axis=1))
    return float((log_normaliser - shifted[np.arange(len(labels)), labels]).mean())


def fit_temperature(probabilities_or_logits: np.ndarray, labels: np.ndarray) -> float:
    """The T minimising the negative log-likelihood of softmax(logits / T) on these (validation) images.

    The likelihood is convex in 1/T, so a golden-section search over 1/T finds the global minimum.
    """
    logits = as_logits(probabilities_or_logits)
    _checked(logits, labels)
    labels = np.asarray(labels, dtype=np.int64)
    low, high = MIN_INVERSE_TEMPERATURE, MAX_INVERSE_TEMPERATURE
    inner_low, inner_high = high - GOLDEN * (high - low), low + GOLDEN * (high - low)
    loss_low = negative_log_likelihood(logits * inner_low, labels)
    loss_high = negative_log_likelihood(logits * inner_high, labels)
    while high - low > SEARCH_TOLERANCE:
        if loss_low <= loss_high:
            high, inner_high, loss_high = inner_high, inner_low, loss_low
            inner_low = high - GOLDEN * (high - low)
            loss_low = negative_log_likelihood(logits * inner_low, labels)
        else:
            low, inner_low, loss_low = inner_low, inner_high, loss_high
            inner_high = low + GOLDEN * (high - low)
            loss_high = negative_log_likelihood(logits * inner_high, labels)
    return float(1.0 / ((low + high) / 2))


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T) as float32: the calibrated probabilities; T = 1 gives ``probabilities`` back."""
    if not temperature > 0:
        raise ValueError(f"the temperature must be positive, got {temperature}")
    return softmax(as_logits(probabilities) / temperature).astype(np.float32)


def calibration_summary(
    validation: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], bins: int = ECE_BINS
) -> dict[str, Any]:
    """For the model card: ECE before and after temperature scaling, T kept only if it lowers validation ECE.

    ``validation`` and ``test`` are (probabilities, labels) of the model as exported.
    """
    fitted = fit_temperature(*validation)
    splits = {"validation": validation, "test": test}
    before = {name: expected_calibration_error(p, y, bins) for name, (p, y) in splits.items()}
    after = {name: expected_calibration_error(apply_temperature(p, fitted), y, bins) for name, (p, y) in splits.items()}
    kept = after["validation"] < before["validation"]
    chosen = after if kept else before
    return {
        "temperature": round(fitted, 4) if kept else 1.0,
        "fitted_temperature": round(fitted, 4),
        "ece_bins": bins,
        "ece_validation_before": round(before["validation"], 5),
        "ece_test_before": round(before["test"], 5),
        "ece_validation": round(chosen["validation"], 5),
        "ece_test": round(chosen["test"], 5),
    }


def threshold_table(
    probabilities: np.ndarray,
    labels: np.ndarray,
    flag_shares: Sequence[float] = FLAG_SHARES,
    chosen_on: np.ndarray | None = None,
) -> list[dict[str, float]]:
    """For each share of images to flag: the threshold (flag when confidence < it) and the share of all errors caught.

    The threshold is the confidence of the first image not flagged when sorted least sure first,
    so ties at that confidence are not flagged and ``flagged`` may fall a little short of the share.
    ``chosen_on``: other probabilities (the validation split's) to choose the thresholds on, so
    that ``flagged`` and ``errors_caught`` on these (the test set's) are measured, not fitted.
    """
    probabilities, labels = _checked(probabilities, labels)
    confidence = probabilities.max(axis=1)
    wrong = probabilities.argmax(axis=1) != labels
    ordered = np.sort(confidence if chosen_on is None else np.asarray(chosen_on, dtype=np.float64).max(axis=1))
    rows = []
    for share in flag_shares:
        if not 0 < share < 1:
            raise ValueError(f"a share of images to flag must be between 0 and 1, got {share}")
        threshold = float(ordered[min(math.ceil(share * len(ordered)), len(ordered) - 1)])
        flagged = confidence < threshold
        rows.append(
            {
                "flag_share": share,
                "threshold": threshold,
                "flagged": float(flagged.mean()),
                "errors_caught": float((flagged & wrong).sum() / wrong.sum()) if wrong.any() else 1.0,
            }
        )
    return rows


def _checked(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probabilities, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels)
    if probabilities.ndim != 2 or len(probabilities) != len(labels) or len(labels) == 0:
        raise ValueError(f"need (N, classes) scores and N labels, N > 0; got {probabilities.shape} and {labels.shape}")
    return probabilities, labels
