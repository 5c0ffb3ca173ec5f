"""Registering a model version: its files are checked, then stored in PostgreSQL with its card.

    python -m producer models register models/mnist_cnn.keras

A version is the Keras file with what training writes beside it: the float LiteRT export
(the card's ``litert_file``, else ``<stem>.tflite``), the full-integer export when the card
names one (``int8.file``), and the card (``<stem>.json``). Nothing is stored unless every check
passes, each failure is one line (ValueError):

- the Keras file is a Keras archive; each LiteRT file loads, takes (1 or any, 28, 28, 1) and
  gives 10 outputs, and predicts finite probabilities;
- on the first MNIST test images (MNIST_DIR): the int8 export agrees with the float one, and,
  where TensorFlow is installed (training and development), the Keras model agrees with its
  float export. Without TensorFlow (the worker image) the card's recorded agreement is relied on.

``init-db`` registers the bundled model (MODEL_PATH) the same way, without the TensorFlow check
(training checked it on the whole test set), and aliases it ``production`` when no model is.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from shared.db import connection, schema
from shared.db.connection import Connection
from shared.digits import IMAGE_SHAPE, INPUT_SHAPE, NUM_CLASSES
from shared.models import store
from shared.models.files import litert_path, model_card_path, version_of
from shared.models.registry import PRODUCTION
from shared.training import mnist

# Test images the exports are compared on: enough to see a broken export, quick on LiteRT.
CHECK_IMAGES = 1000
# Labels the exports must share: float LiteRT is the Keras model to ~1e-6 (training measures 100 %);
# int8 moves a few borderline digits (training measures ~99.8 %); a broken export agrees by chance.
MIN_KERAS_AGREEMENT = 0.99
MIN_INT8_AGREEMENT = 0.97
LITERT_THREADS = 1


@dataclasses.dataclass(frozen=True)
class Registration:
    version: str
    stored: bool  # False: that version was registered already
    checks: list[str]  # what was checked, one line each, for the command to print
    aliased_production: bool = False


def read_model_files(keras_path: Path, name: str | None = None) -> store.ModelFiles:
    """The files of the version whose Keras file is ``keras_path``, read and named, not yet checked."""
    keras_path = Path(keras_path)
    if not keras_path.is_file():
        raise ValueError(
            f"{keras_path} is not a file: register the .keras file written by python -m shared.training.train"
        )
    card = read_card(keras_path)
    folder = keras_path.parent
    tflite_path = folder / card["litert_file"] if isinstance(card.get("litert_file"), str) else litert_path(keras_path)
    int8 = card.get("int8")
    int8_card = int8 if isinstance(int8, dict) else {}
    int8_path = folder / int8_card["file"] if isinstance(int8_card.get("file"), str) else None
    for path, what in ((tflite_path, "its LiteRT export"), (int8_path, "the int8 export its card names")):
        if path is not None and not path.is_file():
            raise ValueError(
                f"{path} ({what}) does not exist: export it with python -m shared.training.train --export-only"
            )
    keras_bytes = keras_path.read_bytes()
    return store.ModelFiles(
        version=version_of(keras_path.stem, keras_bytes),
        name=(name or keras_path.stem)[:200],
        keras_file=str(keras_path.resolve()),
        tflite_file=str(tflite_path.resolve()),
        int8_file=str(int8_path.resolve()) if int8_path else None,
        keras_bytes=keras_bytes,
        tflite_bytes=tflite_path.read_bytes(),
        int8_bytes=int8_path.read_bytes() if int8_path else None,
        card=card,
    )


def read_card(keras_path: Path) -> dict[str, Any]:
    card_path = model_card_path(keras_path)
    if not card_path.exists():
        return {}
    try:
        card = json.loads(card_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{card_path} is not a JSON model card: {error}") from None
    if not isinstance(card, dict):
        raise ValueError(f"{card_path} is not a JSON model card: it holds no object")
    return card


def check_model_files(files: store.ModelFiles, mnist_dir: Path, keras_check: bool = True) -> list[str]:
    """Raise ValueError (one line) unless the files make a servable model; else what was checked."""
    check_keras_archive(files)
    images = check_images(mnist_dir)
    float_labels = litert_labels(files.tflite_bytes, files.tflite_file, images)
    checks = [f"float LiteRT {files.tflite_file}: input (N, 28, 28, 1), 10 outputs"]
    if files.int8_bytes is not None:
        int8_labels = litert_labels(files.int8_bytes, files.int8_file or "int8", images)
        checks.append(f"int8 LiteRT {files.int8_file}: input (N, 28, 28, 1), 10 outputs")
        if images is not None:
            checks.append(agreement_line("int8 LiteRT", "float LiteRT", int8_labels, float_labels, MIN_INT8_AGREEMENT))
    if images is None:
        checks.append(f"no MNIST test images at {mnist_dir}: labels not compared (set MNIST_DIR)")
    elif keras_check and importlib.util.find_spec("tensorflow") is not None:
        checks.append(
            agreement_line(
                "Keras", "float LiteRT", keras_labels(files.keras_file, images), float_labels, MIN_KERAS_AGREEMENT
            )
        )
    else:
        checks.append(recorded_agreement(files.card, keras_check))
    return checks


def check_keras_archive(files: store.ModelFiles) -> None:
    """A ``.keras`` file is a zip archive holding the model's config.json (what model.save writes)."""
    try:
        with zipfile.ZipFile(io.BytesIO(files.keras_bytes)) as archive:
            if "config.json" in archive.namelist():
                return
    except zipfile.BadZipFile:
        pass
    raise ValueError(f"{files.keras_file} is not a Keras model file (.keras, as model.save writes it)")


def check_images(mnist_dir: Path) -> np.ndarray | None:
    """The first MNIST test images, or None when the data is not there."""
    try:
        images, _ = mnist.load_split(mnist_dir, "test")
    except ValueError:
        return None
    return images[:CHECK_IMAGES]


def litert_labels(content: bytes, where: str, images: np.ndarray | None) -> np.ndarray:
    """The labels a LiteRT file predicts for ``images`` after checking its input and output shapes."""
    from ai_edge_litert.interpreter import Interpreter

    from shared.models.runtime import LiteRTPredictor

    try:
        interpreter = Interpreter(model_content=content)
    except (ValueError, RuntimeError) as error:
        raise ValueError(f"{where} is not a LiteRT model: {first_line(error)}") from None
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    input_shape = list(inputs[0]["shape_signature"]) if len(inputs) == 1 else None
    if (
        input_shape is None
        or len(input_shape) != 4
        or input_shape[0] not in (-1, 1)
        or tuple(input_shape[1:]) != INPUT_SHAPE
    ):
        shapes = [list(detail["shape_signature"]) for detail in inputs]
        raise ValueError(f"{where} takes input {shapes}, not one (N, 28, 28, 1) image tensor")
    if len(outputs) != 1 or list(outputs[0]["shape_signature"])[-1:] != [NUM_CLASSES]:
        shapes = [list(detail["shape_signature"]) for detail in outputs]
        raise ValueError(f"{where} gives output {shapes}, not {NUM_CLASSES} probabilities")
    sample = images if images is not None else np.zeros((1, *IMAGE_SHAPE), dtype=np.uint8)
    try:
        probabilities = LiteRTPredictor(content, LITERT_THREADS).predict_batch(sample)
    except (ValueError, RuntimeError) as error:
        raise ValueError(f"{where} fails to predict: {first_line(error)}") from None
    if probabilities.shape != (len(sample), NUM_CLASSES) or not np.isfinite(probabilities).all():
        raise ValueError(f"{where} predicts no finite probabilities of {NUM_CLASSES} digits")
    return probabilities.argmax(axis=1)


def keras_labels(keras_file: str, images: np.ndarray) -> np.ndarray:
    from shared.models import keras_runtime

    try:
        predictor = keras_runtime.KerasPredictor(keras_runtime.load_model(Path(keras_file)))
        return predictor.predict_batch(images).argmax(axis=1)
    except Exception as error:  # Keras raises many kinds for a file it cannot rebuild
        raise ValueError(f"{keras_file} does not load as a Keras model: {first_line(error)}") from None


def agreement_line(name: str, other: str, labels: np.ndarray, other_labels: np.ndarray, minimum: float) -> str:
    agreement = float(np.mean(labels == other_labels))
    if agreement < minimum:
        raise ValueError(
            f"{name} and {other} disagree: the same label on {agreement:.1%} of {len(labels)} MNIST test images"
            f" (at least {minimum:.0%} needed); export again with python -m shared.training.train --export-only"
        )
    return f"{name} and {other} agree on {agreement:.1%} of {len(labels)} MNIST test images"


def recorded_agreement(card: dict[str, Any], keras_check: bool) -> str:
    """Without TensorFlow, the Keras file's agreement with its export as training recorded it on the card."""
    recorded = card.get("litert_label_agreement")
    why = "TensorFlow is not installed here" if keras_check else "the bundled model"
    if not isinstance(recorded, int | float):
        return f"{why}: Keras not compared with its export, and the card records no agreement"
    if recorded < MIN_KERAS_AGREEMENT:
        raise ValueError(
            f"the card records Keras and LiteRT agreeing on {recorded:.1%} of test images"
            f" (at least {MIN_KERAS_AGREEMENT:.0%} needed)"
        )
    return f"{why}: relying on the card, which records Keras and float LiteRT agreeing on {recorded:.1%}"


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def register(
    conn: Connection, keras_path: Path, mnist_dir: Path, name: str | None = None, keras_check: bool = True
) -> Registration:
    """Check and store a version; a version registered before is left as it is (its bytes are the same)."""
    files = read_model_files(keras_path, name)
    if store.model_exists(conn, files.version):
        return Registration(files.version, stored=False, checks=[])
    checks = check_model_files(files, mnist_dir, keras_check)
    stored = store.insert_model(conn, files)  # False: another process stored it meanwhile
    return Registration(files.version, stored, checks)


def register_bundled(conn: Connection, model_path: Path, mnist_dir: Path) -> Registration | None:
    """Register MODEL_PATH's model unless it is, and alias it production when no model is; None without a model file.

    Idempotent and safe when several processes start at once (each statement is ON CONFLICT DO NOTHING).
    """
    if not Path(model_path).is_file():
        return None
    registration = register(conn, model_path, mnist_dir, keras_check=False)
    aliased = store.add_alias_if_missing(conn, PRODUCTION, registration.version)
    return dataclasses.replace(registration, aliased_production=aliased)


def prepare_database(database_url: str, model_path: Path, mnist_dir: Path) -> Registration | None:
    """What ``init-db`` does for tools and tests: apply the migrations, then register the bundled model."""
    schema.migrate(database_url)
    conn = connection.connect(database_url)
    try:
        return register_bundled(conn, model_path, mnist_dir)
    finally:
        conn.close()
