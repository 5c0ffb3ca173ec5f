"""Which LiteRT file a version serves, and which alias names are allowed: the registry's rules, without services."""

import pytest

from shared import models

FLOAT_ACCURACY = 0.9908


def card(int8_accuracy=None, **more):
    found = {"test_accuracy": FLOAT_ACCURACY, **more}
    if int8_accuracy is not None:
        found["int8"] = {"file": "mnist_cnn.int8.tflite", "test_accuracy": int8_accuracy, "label_agreement": 0.998}
    return found


@pytest.mark.parametrize(
    "int8_accuracy, serves",
    [
        (FLOAT_ACCURACY, "int8"),
        (FLOAT_ACCURACY + 0.001, "int8"),  # better than float: of course
        (FLOAT_ACCURACY - 0.0005, "int8"),  # exactly 0.05 points below
        (FLOAT_ACCURACY - 0.0006, "float"),  # more than 0.05 points below
        (0.5, "float"),
    ],
)
def test_int8_is_served_when_within_five_hundredths_of_a_point_of_float(int8_accuracy, serves):
    assert models.registry.serving_variant(card(int8_accuracy), has_int8=True) == serves


def test_a_version_without_int8_figures_or_file_serves_float_and_the_setting_forces_either():
    assert models.registry.serving_variant(card(), has_int8=False) == "float"
    assert models.registry.serving_variant(card(), has_int8=True) == "float"  # an older card: no int8 accuracy recorded
    assert models.registry.serving_variant({"int8": "not an object"}, has_int8=True) == "float"
    assert models.registry.serving_variant(card(0.5), has_int8=True, precision="int8") == "int8"
    assert models.registry.serving_variant(card(FLOAT_ACCURACY), has_int8=True, precision="float") == "float"
    assert (
        models.registry.serving_variant(card(FLOAT_ACCURACY), has_int8=False, precision="int8") == "float"
    )  # no file to serve
    with pytest.raises(ValueError, match="MODEL_PRECISION"):
        models.registry.serving_variant(card(), has_int8=True, precision="int4")


@pytest.mark.parametrize("alias", ["production", "canary", "champion", "a", "shadow_2", "team-b"])
def test_alias_names_that_are_allowed(alias):
    models.registry.check_alias(alias)


@pytest.mark.parametrize("alias", ["", "Production", "2nd", "has space", "x" * 41, "mnist_cnn-1a2b3c4d5e6f", "a;drop"])
def test_alias_names_that_are_refused(alias):
    with pytest.raises(ValueError, match="is not allowed"):
        models.registry.check_alias(alias)
