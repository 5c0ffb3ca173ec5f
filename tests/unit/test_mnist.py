import gzip

import numpy as np
import pytest

from shared.training import mnist


def test_bundled_test_split_is_the_official_one(mnist_dir):
    images, labels = mnist.load_split(mnist_dir, "test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,)
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_npz_and_idx_give_the_same_arrays(mnist_dir, tmp_path):
    images, labels = mnist.load_split(mnist_dir, "test")
    npz = tmp_path / "mnist.npz"
    np.savez(npz, x_test=images[:50], y_test=labels[:50], x_train=images[:1], y_train=labels[:1])
    npz_images, npz_labels = mnist.load_split(npz, "test")
    assert np.array_equal(npz_images, images[:50]) and np.array_equal(npz_labels, labels[:50])


def test_wrong_magic_and_missing_files_are_refused(tmp_path):
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as stream:
        stream.write((2049).to_bytes(4, "big") + bytes(8))
    with pytest.raises(ValueError, match="magic"):
        mnist.load_split(tmp_path, "test")
    with pytest.raises(ValueError, match="missing"):
        mnist.load_split(tmp_path, "train")
    with pytest.raises(ValueError, match="neither"):
        mnist.load_split(tmp_path / "nowhere", "test")
