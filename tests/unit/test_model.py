"""The shipped model and the training command (TensorFlow runs in the test process here)."""

import json

import numpy as np
import pytest

from shared.digits import to_model_input
from shared.models import runtime
from shared.models.files import int8_path, litert_path, model_card_path, model_version, read_model_card
from shared.training import mnist

model = pytest.importorskip("shared.training.model")
keras_runtime = pytest.importorskip("shared.models.keras_runtime")


@pytest.fixture(scope="module")
def model_path(default_settings):
    return default_settings.model_path


def test_shipped_model_reaches_99_6_percent_as_its_card_says(mnist_dir, model_path):
    keras_model = keras_runtime.load_model(model_path)
    assert keras_model.count_params() == model.build_model().count_params()
    images, labels = mnist.load_split(mnist_dir, "test")
    probabilities = keras_runtime.KerasPredictor(keras_model).predict_batch(images)
    accuracy = float((probabilities.argmax(axis=1) == labels).mean())
    assert accuracy >= 0.996
    card = read_model_card(model_path)
    assert abs(card["keras_test_accuracy"] - accuracy) < 0.0005


def test_shipped_int8_export_agrees_with_the_float_model(mnist_dir, model_path):
    images, labels = mnist.load_split(mnist_dir, "test")
    card = read_model_card(model_path)
    float_model = runtime.LiteRTPredictor(litert_path(model_path), threads=2).predict_batch(images)
    int8_model = runtime.LiteRTPredictor(int8_path(model_path), threads=2).predict_batch(images)
    agreement = float((float_model.argmax(axis=1) == int8_model.argmax(axis=1)).mean())
    assert agreement == pytest.approx(card["int8"]["label_agreement"], abs=1e-9) and agreement >= 0.995
    assert float((int8_model.argmax(axis=1) == labels).mean()) == pytest.approx(card["int8"]["test_accuracy"], abs=1e-5)


def test_predictor_agrees_with_keras_predict(mnist_dir, model_path):
    keras_model = keras_runtime.load_model(model_path)
    images, _ = mnist.load_split(mnist_dir, "test")
    expected = keras_model.predict(to_model_input(images[:64]), verbose=0)
    assert np.allclose(keras_runtime.KerasPredictor(keras_model).predict_batch(images[:64]), expected, atol=1e-5)


def test_litert_export_predicts_the_same_labels_as_keras(mnist_dir, model_path):
    images, labels = mnist.load_split(mnist_dir, "test")
    keras_probabilities = keras_runtime.KerasPredictor(keras_runtime.load_model(model_path)).predict_batch(images)
    litert = runtime.load_predictor(model_path, "litert", threads=2)
    litert_probabilities = np.concatenate(
        [litert.predict_batch(images[start : start + 256]) for start in range(0, len(images), 256)]
    )
    assert (litert_probabilities.argmax(axis=1) == keras_probabilities.argmax(axis=1)).all()
    assert np.allclose(litert_probabilities, keras_probabilities, atol=1e-4)
    # Switching batch sizes (single uploads between bulk batches) gives the same answers.
    assert np.allclose(litert.predict_batch(images[:1]), litert_probabilities[:1], atol=1e-6)
    assert litert.predict_batch(images[:0]).shape == (0, 10)


def test_unknown_runtime_and_missing_export_are_clear_errors(tmp_path, model_path):
    with pytest.raises(ValueError, match="MODEL_RUNTIME"):
        runtime.load_predictor(model_path, "onnx", threads=1)
    with pytest.raises(ValueError, match="does not exist"):
        runtime.load_predictor(tmp_path / "absent.keras", "litert", threads=1)


def test_training_on_a_slice_lowers_the_loss_and_saves_a_loadable_model(mnist_dir, tmp_path):
    from shared.training import train

    # The bundled folder has no training images: train on the test split's files renamed.
    data = tmp_path / "data"
    data.mkdir()
    test_images, test_labels = mnist.IDX_FILES["test"]
    for images_name, labels_name in mnist.IDX_FILES.values():
        (data / images_name).write_bytes((mnist_dir / test_images).read_bytes())
        (data / labels_name).write_bytes((mnist_dir / test_labels).read_bytes())

    out = tmp_path / "tiny.keras"
    card = train.train(data, epochs=2, batch_size=128, seed=1, out=out, limit=3000)

    assert card["loss_per_epoch"][1] < card["loss_per_epoch"][0]
    assert card["train_images"] + card["validation_images"] == 3000 and card["test_accuracy"] > 0.5
    assert json.loads(model_card_path(out).read_text())["seed"] == 1
    assert card["litert_label_agreement"] >= 0.999 and litert_path(out).exists()
    # The int8 export agrees with its float model on (almost) every image of the slice.
    assert int8_path(out).exists() and card["int8"]["label_agreement"] >= 0.98
    assert (
        0 < card["temperature"]
        and 0 <= card["calibration"]["ece_test"] <= card["calibration"]["ece_test_before"] + 1e-9
    )
    assert [row["flag_share"] for row in card["low_confidence_thresholds"]] == [0.005, 0.01, 0.02, 0.05]
    reloaded = keras_runtime.load_model(out)
    assert reloaded.count_params() == model.build_model().count_params()
    assert model_version(out).startswith("tiny-")


def test_the_temperature_is_fitted_on_the_validation_digits_as_they_are_and_distorted(mnist_dir):
    from shared.training.export import with_distorted_copy

    images, labels = mnist.load_split(mnist_dir, "test")
    split = (images[:64], labels[:64])
    fitted_on = with_distorted_copy(split, seed=3)
    assert fitted_on[0].shape == (128, 28, 28) and fitted_on[0].dtype == np.uint8
    assert np.array_equal(fitted_on[0][:64], split[0]) and np.array_equal(
        fitted_on[1], np.concatenate([labels[:64]] * 2)
    )
    assert (fitted_on[0][64:] != split[0]).any(axis=(1, 2)).mean() > 0.9  # a distorted copy, not the same digits
    assert np.array_equal(with_distorted_copy(split, seed=3)[0], fitted_on[0])  # the seed decides the distortions
