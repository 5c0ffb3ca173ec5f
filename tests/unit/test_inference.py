"""LiteRT inference (shared/runtime.py): any batch size gives each image the answer it gets alone."""

import numpy as np
import pytest

from shared.models import runtime
from shared.models.files import int8_path, litert_path
from shared.training import mnist


@pytest.mark.parametrize("export", [litert_path, int8_path], ids=["float", "int8"])
def test_every_batch_size_predicts_each_image_as_alone_on_seven_interpreters_at_most(
    default_settings, mnist_dir, export
):
    """A batch is zero-padded to the next power of two, so micro-batches of every size share seven interpreters."""
    images, _ = mnist.load_split(mnist_dir, "test")
    images = images[:200]
    predictor = runtime.LiteRTPredictor(export(default_settings.model_path), threads=1)
    alone = np.concatenate([predictor.predict_batch(images[k : k + 1]) for k in range(len(images))])
    for size in (*range(2, 34), 63, 64, 65, 130, 200):
        together = predictor.predict_batch(images[:size])
        assert together.shape == (size, 10)
        assert np.allclose(together, alone[:size], atol=1e-6), size
    assert sorted(predictor._by_batch_size) == [1, 2, 4, 8, 16, 32, 64]
    assert [runtime.padded_size(n) for n in (1, 2, 3, 5, 8, 9, 33, 64)] == [1, 2, 4, 8, 8, 16, 64, 64]
