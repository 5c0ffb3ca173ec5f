"""Calibration maths on hand-made probabilities: ECE, the fitted temperature, and the low-confidence thresholds."""

import numpy as np
import pytest

from shared.training.calibration import (
    apply_temperature,
    calibration_summary,
    expected_calibration_error,
    fit_temperature,
    softmax,
    threshold_table,
)


def two_class(confidences: list[float], correct: list[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Rows predicting class 0 with each confidence; the label is 0 where ``correct``, else 1."""
    confidence = np.asarray(confidences)
    probabilities = np.stack([confidence, 1 - confidence], axis=1)
    return probabilities, np.where(correct, 0, 1)


def sampled(count: int, sharpness: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(logits); probabilities reported as softmax(sharpness x logits)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(count, 10))
    truth = softmax(logits)
    labels = (truth.cumsum(axis=1) < rng.random((count, 1))).sum(axis=1).clip(max=9)  # inverse CDF
    return softmax(logits * sharpness), labels


def test_ece_of_a_made_up_case():
    # Bin (0.8667, 0.9333]: 10 images at 0.9, 8 right -> gap 0.1; bin (0.5333, 0.6]: 10 at 0.6, 6 right -> gap 0.
    probabilities, labels = two_class([0.9] * 10 + [0.6] * 10, [True] * 8 + [False] * 2 + [True] * 6 + [False] * 4)
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.5 * 0.1)


def test_ece_is_zero_when_confidence_matches_accuracy_and_one_for_sure_wrong_answers():
    probabilities, labels = two_class([0.75] * 4, [True, True, True, False])
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.0)
    probabilities, labels = two_class([1.0] * 5, [False] * 5)
    assert expected_calibration_error(probabilities, labels) == pytest.approx(1.0)


def test_gaps_of_opposite_sign_in_different_bins_do_not_cancel():
    # 0.95 (bin 15) all right: gap 0.05; 0.55 (bin 9) all wrong: gap 0.55.
    probabilities, labels = two_class([0.95, 0.95, 0.55, 0.55], [True, True, False, False])
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.5 * 0.05 + 0.5 * 0.55)
    assert expected_calibration_error(probabilities, labels, bins=1) == pytest.approx(abs(0.5 - 0.75))


def test_an_already_calibrated_set_keeps_a_temperature_of_one():
    probabilities, labels = sampled(20_000, sharpness=1.0)
    assert fit_temperature(probabilities, labels) == pytest.approx(1.0, abs=0.05)
    assert expected_calibration_error(probabilities, labels) < 0.02


def test_an_overconfident_set_gets_a_temperature_above_one_that_undoes_it():
    probabilities, labels = sampled(20_000, sharpness=2.0)
    temperature = fit_temperature(probabilities, labels)
    assert temperature == pytest.approx(2.0, rel=0.05)
    calibrated = apply_temperature(probabilities, temperature)
    assert expected_calibration_error(calibrated, labels) < expected_calibration_error(probabilities, labels) / 3


def test_an_underconfident_set_gets_a_temperature_below_one():
    probabilities, labels = sampled(20_000, sharpness=0.5)
    assert fit_temperature(probabilities, labels) == pytest.approx(0.5, rel=0.05)


def test_logits_and_their_probabilities_give_the_same_temperature():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 4, size=(2000, 10))
    labels = rng.integers(0, 10, size=2000)
    assert fit_temperature(logits, labels) == pytest.approx(fit_temperature(softmax(logits), labels), rel=1e-3)


def test_temperature_scaling_softens_without_changing_the_answer():
    probabilities = softmax(np.array([[2.0, 0.0, 0.0], [0.0, 5.0, 1.0]]))
    assert np.allclose(apply_temperature(probabilities, 1.0), probabilities, atol=1e-6)
    softened = apply_temperature(probabilities, 2.0)
    assert np.allclose(softened, softmax(np.array([[1.0, 0.0, 0.0], [0.0, 2.5, 0.5]])), atol=1e-6)
    assert (softened.argmax(axis=1) == probabilities.argmax(axis=1)).all()
    assert (softened.max(axis=1) < probabilities.max(axis=1)).all()
    with pytest.raises(ValueError, match="positive"):
        apply_temperature(probabilities, 0.0)


def test_saturated_float32_probabilities_stay_finite():
    probabilities = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=np.float32)
    softened = apply_temperature(probabilities, 3.0)
    assert np.isfinite(softened).all() and (softened.argmax(axis=1) == [0, 1]).all()


def test_the_summary_keeps_a_temperature_only_when_it_lowers_validation_ece():
    overconfident = sampled(10_000, sharpness=2.0, seed=2), sampled(10_000, sharpness=2.0, seed=3)
    summary = calibration_summary(*overconfident)
    assert summary["temperature"] == pytest.approx(2.0, rel=0.05)
    assert summary["ece_test"] < summary["ece_test_before"]
    hard_ones = two_class([1.0] * 3, [True] * 3)  # already perfect: nothing to gain
    assert calibration_summary(hard_ones, hard_ones)["temperature"] == 1.0


def test_thresholds_flag_the_least_sure_share_and_count_the_errors_they_catch():
    # 20 images, confidence 0.50, 0.52, ... 0.88; the two least sure and the fifth are wrong.
    confidences = [0.5 + 0.02 * k for k in range(20)]
    correct = [k not in (0, 1, 4) for k in range(20)]
    probabilities, labels = two_class(confidences, correct)
    rows = threshold_table(probabilities, labels, flag_shares=(0.1, 0.25))
    assert rows[0]["threshold"] == pytest.approx(0.54) and rows[0]["flagged"] == pytest.approx(0.1)
    assert rows[0]["errors_caught"] == pytest.approx(2 / 3)
    assert rows[1]["threshold"] == pytest.approx(0.60) and rows[1]["flagged"] == pytest.approx(0.25)
    assert rows[1]["errors_caught"] == pytest.approx(1.0)


def test_ties_at_the_threshold_are_not_flagged():
    probabilities, labels = two_class([0.6] + [0.99] * 9, [False] + [True] * 9)
    (row,) = threshold_table(probabilities, labels, flag_shares=(0.2,))
    assert (
        row["threshold"] == pytest.approx(0.99) and row["flagged"] == pytest.approx(0.1) and row["errors_caught"] == 1.0
    )


@pytest.mark.parametrize("shares", [(0.0,), (1.0,), (-0.1,)])
def test_a_share_outside_zero_to_one_is_refused(shares):
    probabilities, labels = two_class([0.9, 0.8], [True, False])
    with pytest.raises(ValueError, match="between 0 and 1"):
        threshold_table(probabilities, labels, flag_shares=shares)


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="labels"):
        expected_calibration_error(np.full((3, 10), 0.1), np.zeros(2, dtype=int))


def test_thresholds_chosen_on_validation_are_measured_on_the_test_set():
    validation, _ = two_class([0.5 + 0.05 * k for k in range(10)], [True] * 10)  # 0.50 ... 0.95
    test, labels = two_class([0.52, 0.58, 0.9, 0.97], [False, True, False, True])
    (row,) = threshold_table(test, labels, flag_shares=(0.2,), chosen_on=validation)
    assert row["threshold"] == pytest.approx(0.6)  # the third least sure of the validation images
    assert row["flagged"] == pytest.approx(0.5) and row["errors_caught"] == pytest.approx(0.5)
