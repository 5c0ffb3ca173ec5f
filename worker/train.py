"""Train the MNIST CNN and write the model file plus a JSON model card beside it.

    python -m worker.train --data ../shared/datasets/mnist --epochs 12 --out models/mnist_cnn.keras

Also writes ``models/mnist_cnn.tflite``, the LiteRT export the worker runs by default, after
checking that it predicts the same labels as Keras on the whole test set.
``--data`` is a folder of the four standard IDX ``.gz`` files or Keras' ``mnist.npz``.
Without it the data set is downloaded through ``keras.datasets.mnist`` (needs internet).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from shared import mnist
from shared.config import DEFAULT_MNIST_DIR, DEFAULT_MODEL_PATH
from shared.model_info import model_card_path, read_model_card

MIN_LITERT_AGREEMENT = 0.999


def load_training_data(data: Path | None) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], dict[str, str]]:
    """(train, test, checksums); downloads only when no local data is given."""
    if data is None:
        import keras

        train, test = keras.datasets.mnist.load_data()
        return train, test, {"source": "keras.datasets.mnist download"}
    return mnist.load_split(data, "train"), mnist.load_split(data, "test"), mnist.file_checksums(data)


def train(
    data: Path | None,
    epochs: int,
    batch_size: int,
    seed: int,
    out: Path,
    limit: int | None = None,
) -> dict:
    """Train, evaluate on the full test split, save model and card; return the card."""
    import keras
    import tensorflow as tf

    from shared.digits import NUM_CLASSES, to_model_input
    from shared.model import build_model, save_model

    keras.utils.set_random_seed(seed)
    (train_images, train_labels), (test_images, test_labels), checksums = load_training_data(data)
    if limit:
        train_images, train_labels = train_images[:limit], train_labels[:limit]
    x_train = to_model_input(train_images)
    y_train = keras.utils.to_categorical(train_labels, NUM_CLASSES)
    x_test = to_model_input(test_images)
    y_test = keras.utils.to_categorical(test_labels, NUM_CLASSES)

    model = build_model()
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    started = time.perf_counter()
    history = model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, validation_split=0.1, verbose=2)
    training_seconds = time.perf_counter() - started
    test_loss, test_accuracy = model.evaluate(x_test, y_test, verbose=0)
    save_model(model, out)
    litert = export_and_verify(model, out, test_images)

    card = {
        "model_file": Path(out).name,
        "architecture": "keras mnist_convnet (Conv32-Pool-Conv64-Pool-Dropout0.5-Dense10)",
        "parameters": int(model.count_params()),
        "test_accuracy": round(float(test_accuracy), 5),
        "test_loss": round(float(test_loss), 5),
        "test_images": int(len(test_images)),
        "train_images": int(len(train_images)),
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        "loss_per_epoch": [round(float(v), 5) for v in history.history["loss"]],
        "data_checksums": checksums,
        **litert,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "python_version": platform.python_version(),
        "training_seconds": round(training_seconds, 1),
        "trained_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    model_card_path(out).write_text(json.dumps(card, indent=2) + "\n")
    return card


def export_and_verify(model: Any, out: Path, test_images: np.ndarray) -> dict[str, Any]:
    """Export the LiteRT file and prove it predicts what Keras predicts on the whole test set."""
    from shared.inference import LiteRTPredictor
    from shared.model import KerasPredictor, export_litert

    litert_file = export_litert(model, out)
    keras_probabilities = KerasPredictor(model).predict_batch(test_images)
    litert_probabilities = LiteRTPredictor(litert_file, threads=os.cpu_count() or 1).predict_batch(test_images)
    agreement = float((keras_probabilities.argmax(axis=1) == litert_probabilities.argmax(axis=1)).mean())
    if agreement < MIN_LITERT_AGREEMENT:
        raise RuntimeError(f"the LiteRT export agrees with Keras on only {agreement:.2%} of the test set")
    return {
        "litert_file": litert_file.name,
        "litert_label_agreement": agreement,
        "litert_max_abs_difference": float(np.abs(keras_probabilities - litert_probabilities).max()),
    }


def export_existing(out: Path, data: Path | None) -> dict:
    """Re-export the LiteRT file of an already trained model and update its card."""
    from shared.model import load_model

    test_images, _ = mnist.load_split(data or DEFAULT_MNIST_DIR, "test")
    card = read_model_card(out)
    card.update(export_and_verify(load_model(out), out, test_images))
    model_card_path(out).write_text(json.dumps(card, indent=2) + "\n")
    return card


@click.command()
@click.option("--data", type=click.Path(exists=True, path_type=Path), help="Folder of MNIST IDX .gz files, or mnist.npz. Omit to download.")
@click.option("--epochs", default=12, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=1337, show_default=True, type=int)
@click.option("--limit", type=click.IntRange(min=1), help="Train on the first N training images only.")
@click.option("--out", default=DEFAULT_MODEL_PATH, show_default=True, type=click.Path(path_type=Path))
@click.option("--export-only", is_flag=True, help="Do not train: export OUT to LiteRT and verify it.")
def main(data: Path | None, epochs: int, batch_size: int, seed: int, limit: int | None, out: Path, export_only: bool) -> None:
    """Train the CNN and write OUT, OUT.tflite (LiteRT export) and OUT.json (the model card)."""
    if export_only:
        card = export_existing(out, data)
        click.echo(f"wrote {card['litert_file']}: labels agree with Keras on {card['litert_label_agreement']:.2%} of the test set")
        return
    card = train(data, epochs, batch_size, seed, out, limit)
    click.echo(f"test accuracy {card['test_accuracy']:.4f}, loss {card['test_loss']:.4f}; wrote {out}")


if __name__ == "__main__":
    main()
