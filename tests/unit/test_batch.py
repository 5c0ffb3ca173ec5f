"""A batch's stored images, decoded in the worker: an unknown id or a corrupt image fails alone; predicted chunks
waiting for the database are stored together."""

from __future__ import annotations

import numpy as np

from shared.digits import NUM_CLASSES
from shared.images.codec import encode_image
from shared.jobs.results import FailureRow, PredictionBatch
from worker.batch import UNKNOWN_ID_REASON, PendingStores, decode_batch, predict_chunk

DIGITS = np.random.default_rng(5).integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
STORED = {10: encode_image(DIGITS[0]), 11: encode_image(DIGITS[1]), 12: encode_image(DIGITS[2])}


def test_a_batch_of_good_images_decodes_in_order_without_failures():
    ids, images, failures = decode_batch([12, 10, 11], STORED)
    assert ids == [12, 10, 11] and failures == []
    assert np.array_equal(images, DIGITS[[2, 0, 1]])


def test_an_id_asked_twice_is_decoded_once():
    ids, images, _ = decode_batch([10, 10, 11], STORED)
    assert ids == [10, 11] and len(images) == 2


def test_an_unknown_id_fails_alone():
    ids, images, failures = decode_batch([10, 99, 11], STORED)
    assert ids == [10, 11] and np.array_equal(images, DIGITS[:2])
    assert [(failure.input_data_id, failure.reason) for failure in failures] == [(99, UNKNOWN_ID_REASON)]


def test_a_corrupt_image_fails_alone():
    ids, images, failures = decode_batch([10, 13, 11], {**STORED, 13: b"\x93NUMPY not an image"})
    assert ids == [10, 11] and np.array_equal(images, DIGITS[:2])
    assert [failure.input_data_id for failure in failures] == [13]
    assert failures[0].reason.startswith("corrupt image: ")


def test_a_batch_with_nothing_decodable_is_empty_images_and_only_failures():
    ids, images, failures = decode_batch([13, 99], {13: b"garbage"})
    assert ids == [] and images.shape == (0, 28, 28)
    assert {failure.input_data_id for failure in failures} == {13, 99}


def test_predict_chunk_predicts_only_the_decodable_images():
    seen = []

    def predict(images: np.ndarray) -> np.ndarray:
        seen.append(images)
        return np.eye(10, dtype=np.float32)[[3] * len(images)]

    predictions, failures = predict_chunk(predict, 1, [10, 99, 11], STORED)
    assert len(seen) == 1 and np.array_equal(seen[0], DIGITS[:2])
    assert predictions.image_ids.tolist() == [10, 11] and predictions.labels.tolist() == [3, 3]
    assert [failure.input_data_id for failure in failures] == [99]


def test_predict_chunk_does_not_call_the_model_when_nothing_is_left():
    predictions, failures = predict_chunk(model_must_not_run, 1, [99], {})
    assert len(predictions) == 0 and predictions.probabilities.shape == (0, 10) and len(failures) == 1


def model_must_not_run(images: np.ndarray) -> np.ndarray:
    raise AssertionError("the model was called for an empty chunk")


def test_waiting_chunks_are_stored_together_in_order_and_a_store_that_finds_none_makes_no_call():
    calls: list[tuple] = []

    def store(conn, job_id, version, predictions, failures):
        labels = predictions.true_labels.tolist()
        calls.append((conn, job_id, version, predictions.image_ids.tolist(), labels, failures))
        return len(predictions), len(failures)

    pending = PendingStores(store, 7, "v1")
    first = PredictionBatch.of([1, 2], np.eye(NUM_CLASSES, dtype=np.float32)[[3, 4]], [3, -1])
    second = PredictionBatch.of([5], np.eye(NUM_CLASSES, dtype=np.float32)[[9]], [8])
    pending.add(first, [])
    pending.add(second, [FailureRow(6, "corrupt image")])
    assert pending.store("conn") == (3, 1)
    assert calls == [("conn", 7, "v1", [1, 2, 5], [3, -1, 8], [FailureRow(6, "corrupt image")])]
    assert pending.store("conn") == (0, 0) and len(calls) == 1


def test_concatenated_batches_keep_true_labels_only_when_every_one_has_them():
    labelled = PredictionBatch.of([1], np.eye(NUM_CLASSES, dtype=np.float32)[[2]], [2])
    unlabelled = PredictionBatch.of([4], np.eye(NUM_CLASSES, dtype=np.float32)[[5]])
    both = PredictionBatch.concatenate([labelled, unlabelled])
    assert both.image_ids.tolist() == [1, 4] and both.labels.tolist() == [2, 5] and both.true_labels is None
    assert PredictionBatch.concatenate([labelled, labelled]).true_labels.tolist() == [2, 2]
