"""Train the MNIST CNN and write the model file plus a JSON model card beside it.

    python -m shared.training.train --data ../shared/datasets/mnist --out models/mnist_cnn.keras

Also writes ``models/mnist_cnn.tflite`` (float LiteRT, checked to predict the labels Keras
predicts on the whole test set) and ``models/mnist_cnn.int8.tflite`` (full-integer), both
with the temperature fitted on the validation split folded in (see worker/export.py).
``--data`` is a folder of the four standard IDX ``.gz`` files or Keras' ``mnist.npz``.
Without it the data set is downloaded through ``keras.datasets.mnist`` (needs internet).
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import platform
import time
from pathlib import Path

import click
import numpy as np

from shared.config import DEFAULT_MNIST_DIR, DEFAULT_MODEL_PATH
from shared.models.files import model_card_path, read_model_card
from shared.training import export, mnist

ARCHITECTURE = "space-to-depth stem, Conv32-Conv64-Pool-Conv128 with batch norm, Dropout0.3-Dense10"
VALIDATION_IMAGES = 5000
EARLY_STOPPING_PATIENCE = 8
PEAK_LEARNING_RATE = 3e-3


def load_training_data(
    data: Path | None,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], dict[str, str]]:
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
    validation_images: int = VALIDATION_IMAGES,
    patience: int = EARLY_STOPPING_PATIENCE,
) -> dict:
    """Train on augmented digits, keep the best epoch on the validation split, then finalise.

    The validation split comes out of the training images, so the official test set is
    never used to choose anything: it is only measured, once, after training.
    """
    import keras
    import tensorflow as tf

    from shared.digits import to_model_input
    from shared.training.augment import Augmentation, augment_batch
    from shared.training.model import build_model

    keras.utils.set_random_seed(seed)
    (train_images, train_labels), test, checksums = load_training_data(data)
    if limit:
        train_images, train_labels = train_images[:limit], train_labels[:limit]
    order = np.random.default_rng(seed).permutation(len(train_images))
    held_out = min(validation_images, len(train_images) // 10)
    validation = (train_images[order[:held_out]], train_labels[order[:held_out]])
    fitting = (train_images[order[held_out:]], train_labels[order[held_out:]])

    augmentation = Augmentation()
    batches = (
        tf.data.Dataset.from_tensor_slices((to_model_input(fitting[0]), fitting[1].astype(np.int32)))
        .shuffle(len(fitting[0]), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .map(lambda x, y: (augment_batch(x, augmentation), y), num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )
    steps = epochs * math.ceil(len(fitting[0]) / batch_size)
    warmup = min(steps // 10, math.ceil(len(fitting[0]) / batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=PEAK_LEARNING_RATE / 10,
        decay_steps=steps - warmup,
        warmup_target=PEAK_LEARNING_RATE,
        warmup_steps=warmup,
    )
    model = build_model()
    model.compile(
        loss="sparse_categorical_crossentropy", optimizer=keras.optimizers.Adam(schedule), metrics=["accuracy"]
    )
    # The learning rate falls all the way, so the best epochs come last: stopping only
    # watches the second half, and keeps the best epoch's weights.
    stopping = keras.callbacks.EarlyStopping(
        monitor="val_accuracy", patience=patience, restore_best_weights=True, start_from_epoch=epochs // 2
    )
    started = time.perf_counter()
    history = model.fit(
        batches,
        epochs=epochs,
        validation_data=(to_model_input(validation[0]), validation[1]),
        callbacks=[stopping],
        verbose=2,
    )
    training_seconds = time.perf_counter() - started
    card = {
        "model_file": Path(out).name,
        "architecture": ARCHITECTURE,
        "parameters": int(model.count_params()),
        "train_images": int(len(fitting[0])),
        "validation_images": int(len(validation[0])),
        "epochs": epochs,
        "epochs_run": len(history.history["loss"]),
        "best_epoch": int(np.argmax(history.history["val_accuracy"])) + 1,
        "batch_size": batch_size,
        "peak_learning_rate": PEAK_LEARNING_RATE,
        "augmentation": dataclasses.asdict(augmentation),
        "seed": seed,
        "loss_per_epoch": [round(float(v), 5) for v in history.history["loss"]],
        "val_accuracy_per_epoch": [round(float(v), 5) for v in history.history["val_accuracy"]],
        "data_checksums": checksums,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "python_version": platform.python_version(),
        "training_seconds": round(training_seconds, 1),
        "trained_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    return export.finalise(model, out, card, validation, test, fitting[0])


def export_existing(out: Path, data: Path | None) -> dict:
    """Finalise an already trained model again (calibration, both exports, checks, card).

    Needs the training split too: the validation images are the same ones training held
    out, chosen again from the card's seed.
    """
    from shared.models.keras_runtime import load_model

    card = read_model_card(out)
    if "validation_images" not in card:
        raise click.ClickException(f"{model_card_path(out)} is not a card of this training recipe: train again")
    (train_images, train_labels), test, _ = load_training_data(data or DEFAULT_MNIST_DIR)
    order = np.random.default_rng(card["seed"]).permutation(len(train_images))
    held_out = card["validation_images"]
    validation = (train_images[order[:held_out]], train_labels[order[:held_out]])
    model = load_model(out)
    if card.get("temperature", 1.0) != 1.0:
        from shared.training.model import fold_temperature

        fold_temperature(model, 1.0 / card["temperature"])  # undo: finalise fits it again
    return export.finalise(model, out, card, validation, test, train_images[order[held_out:]])


@click.command()
@click.option(
    "--data",
    type=click.Path(exists=True, path_type=Path),
    help="Folder of MNIST IDX .gz files, or mnist.npz. Omit to download.",
)
@click.option("--epochs", default=30, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=1337, show_default=True, type=int)
@click.option("--limit", type=click.IntRange(min=1), help="Train on the first N training images only.")
@click.option("--out", default=DEFAULT_MODEL_PATH, show_default=True, type=click.Path(path_type=Path))
@click.option(
    "--export-only", is_flag=True, help="Do not train: calibrate and export OUT again, verify, rewrite the card."
)
def main(
    data: Path | None, epochs: int, batch_size: int, seed: int, limit: int | None, out: Path, export_only: bool
) -> None:
    """Train the CNN and write OUT, OUT.tflite (LiteRT export) and OUT.json (the model card)."""
    if export_only:
        card = export_existing(out, data)
    else:
        card = train(data, epochs, batch_size, seed, out, limit)
    int8 = card["int8"]
    click.echo(
        f"test accuracy {card['test_accuracy']:.4f}"
        f" (int8 {int8['test_accuracy']:.4f}, agreement {int8['label_agreement']:.2%}),"
        f" ECE {card['calibration']['ece_test']:.4f} at T={card['temperature']}; wrote {out}"
    )


if __name__ == "__main__":
    main()
