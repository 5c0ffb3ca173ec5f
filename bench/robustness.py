"""Accuracy on MNIST test digits re-made as pictures from real sources, one row per variant.

    python -m bench.robustness --model models/mnist_cnn.tflite [--model OTHER.tflite ...]
        [--limit 2000 | --all] [--json out.json]

Every variant (bench/variants.py) renders the same seeded subset of MNIST's test split as the
file a user would upload; each file goes through the upload path, ``user_image_to_mnist``
(a picture it refuses counts as an error, and is also counted apart), and then through each
model's LiteRT predictor. The pictures are made once and shared by the models, so their
columns compare the same inputs. ``evaluate`` gives the training command the same table.
Published handwriting by other writers (bench/sources.py) follows as rows of its own, all of
its digits whatever ``--limit`` says, and is left out of the mean of the variants.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click
import numpy as np

from bench.common import RESULTS_DIR
from bench.sources import SOURCES
from bench.variants import VARIANTS, picture_bytes, render_variant
from shared.config import DEFAULT_MNIST_DIR, load_settings
from shared.digits import IMAGE_SHAPE
from shared.images.preprocess import PREPROCESS_VERSION, user_image_to_mnist
from shared.models.files import litert_path
from shared.models.runtime import LiteRTPredictor, Predictor
from shared.training import mnist
from shared.training.calibration import expected_calibration_error

DEFAULT_LIMIT = 2000
SEED = 12
MAX_PIXELS = 4_000_000  # the web's default MAX_UPLOAD_PIXELS is larger; these pictures are far smaller


@dataclasses.dataclass(frozen=True)
class Prepared:
    """One variant's digits after the upload path; ``refused`` rows are blank and count as wrong."""

    digits: np.ndarray  # (N, 28, 28) uint8
    refused: np.ndarray  # (N,) bool
    labels: np.ndarray  # (N,)


def subset(count: int, limit: int | None, seed: int = SEED) -> np.ndarray:
    """The same ``limit`` test indices for every variant and every model (all of them with ``None``)."""
    if limit is None or limit >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=limit, replace=False))


def prepare_variant(name: str, images: np.ndarray, labels: np.ndarray, seed: int = SEED) -> Prepared:
    """Render ``images`` as variant ``name`` and take each file through the upload path."""
    rng = np.random.default_rng([seed, list(VARIANTS).index(name)])
    return _through_upload_path(render_variant(name, images, rng), labels)


def prepare_source(name: str, limit: int | None, seed: int = SEED) -> Prepared | None:
    """A published set's digits (``limit`` of them, chosen by seed) through the upload path; None if not installed."""
    source = SOURCES[name]
    loaded = source.load()
    if loaded is None:
        return None
    images, labels = loaded
    chosen = subset(len(images), limit, seed)
    rng = np.random.default_rng([seed, len(VARIANTS) + list(SOURCES).index(name)])
    return _through_upload_path([picture_bytes(source.render(images[i], rng), "PNG") for i in chosen], labels[chosen])


def _through_upload_path(files: list[bytes], labels: np.ndarray) -> Prepared:
    digits = np.zeros((len(files), *IMAGE_SHAPE), dtype=np.uint8)
    refused = np.zeros(len(files), dtype=bool)
    for index, data in enumerate(files):
        try:
            digits[index] = user_image_to_mnist(data, MAX_PIXELS)
        except ValueError:
            refused[index] = True
    return Prepared(digits, refused, np.asarray(labels))


def score(predictor: Predictor, prepared: Prepared) -> dict[str, Any]:
    """Accuracy over every image of the variant (a refusal is an error), the share refused, and the expected
    calibration error of the pictures read (a refused one has no confidence to judge)."""
    probabilities = predictor.predict_batch(prepared.digits)
    correct = (probabilities.argmax(axis=1) == prepared.labels) & ~prepared.refused
    read = ~prepared.refused
    ece = expected_calibration_error(probabilities[read], prepared.labels[read]) if read.any() else 0.0
    return {
        "accuracy": float(correct.mean()),
        "refused": float(prepared.refused.mean()),
        "images": len(correct),
        "ece": round(float(ece), 5),
    }


def evaluate(
    predictor: Predictor,
    images: np.ndarray,
    labels: np.ndarray,
    variants: Iterable[str] = tuple(VARIANTS),
    limit: int | None = DEFAULT_LIMIT,
) -> dict[str, dict[str, Any]]:
    """{variant: {"accuracy", "refused", "images"}} of one model on ``limit`` of ``images`` (all with None).

    For the training command: ``evaluate(LiteRTPredictor(tflite_file, threads), test_images, test_labels)``.
    """
    chosen = subset(len(images), limit)
    return {name: score(predictor, prepare_variant(name, images[chosen], labels[chosen])) for name in variants}


def compare(model_files: list[Path], images: np.ndarray, labels: np.ndarray, limit: int | None, threads: int) -> dict:
    """Every model on the same rendered pictures: {model file: {variant: scores}}."""
    predictors = {str(path): LiteRTPredictor(path, threads) for path in model_files}
    chosen = subset(len(images), limit)
    results: dict[str, dict[str, Any]] = {name: {} for name in predictors}
    for variant in VARIANTS:
        prepared = prepare_variant(variant, images[chosen], labels[chosen])
        for name, predictor in predictors.items():
            results[name][variant] = score(predictor, prepared)
    for source in SOURCES:  # other writers' digits: all of them, however few MNIST images are asked for
        published = prepare_source(source, None)
        for name, predictor in predictors.items():
            if published is not None:
                results[name][source] = score(predictor, published)
    return results


def table(results: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Variant x model: accuracy and ECE, how many pictures were refused when any were; then the mean over variants."""
    models = list(results)
    names = {model: Path(model).name for model in models}
    if len(set(names.values())) < len(names):  # e.g. an old and a new mnist_cnn.tflite: say which folder
        names = {model: f"{Path(model).parent.name}/{Path(model).name}" for model in models}
    width = max(28, *(len(name) + 2 for name in names.values()))
    lines = [f"{'variant':<18}" + "".join(f"{names[model]:>{width}}" for model in models) + "  what"]
    described = {name: spec.what for name, spec in VARIANTS.items()}
    described.update({name: spec.what for name, spec in SOURCES.items()})
    for variant, what in described.items():
        if all(variant not in results[model] for model in models):
            continue
        cells = []
        for model in models:
            row = results[model].get(variant)
            if row is None:
                cells.append(f"{'-':>{width}}")
                continue
            refused = round(row["refused"] * row["images"])
            cell = f"{row['accuracy']:.2%} ece {row.get('ece', 0):.2%}" + (f" ({refused} refused)" if refused else "")
            cells.append(f"{cell:>{width}}")
        lines.append(f"{variant:<18}" + "".join(cells) + f"  {what}")
    means = []
    for model in models:
        rows = [row for variant, row in results[model].items() if variant in VARIANTS]
        means.append(f"{np.mean([row['accuracy'] for row in rows]):.2%}".rjust(width))
    lines.append(f"{'mean of variants':<18}" + "".join(means))
    return lines


def section(baseline: Path | None = None, limit: int | None = DEFAULT_LIMIT) -> list[str]:
    """``python -m bench --sections robustness``: the shipped model (MODEL_PATH's .tflite), and ``baseline`` if given.

    Writes bench/results/robustness.json.
    """
    settings = load_settings()
    models = [litert_path(settings.model_path), *([baseline] if baseline else [])]
    images, labels = mnist.load_split(settings.mnist_dir, "test")
    results = compare(models, images, labels, limit, threads=1)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "robustness.json").write_text(
        json.dumps({"seed": SEED, "limit": limit, "results": results}, indent=2) + "\n"
    )
    return [f"MNIST test split, {len(subset(len(images), limit))} images per variant (seed {SEED})", *table(results)]


@click.command()
@click.option(
    "--model", "models", multiple=True, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--limit", default=DEFAULT_LIMIT, show_default=True, type=click.IntRange(min=1), help="Test images per variant."
)
@click.option("--all", "every_image", is_flag=True, help="All 10,000 test images per variant.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1), help="LiteRT threads per model.")
@click.option("--data", default=DEFAULT_MNIST_DIR, show_default=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write the results here."
)
@click.option(
    "--card",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Record the table in this model card: its own model's rows, and every other --model as a baseline.",
)
def main(
    models: tuple[Path, ...],
    limit: int,
    every_image: bool,
    threads: int,
    data: Path,
    json_path: Path | None,
    card: Path | None,
) -> None:
    """Accuracy per robustness variant for each --model (.tflite)."""
    images, labels = mnist.load_split(data, "test")
    count = None if every_image else limit
    results = compare(list(models), images, labels, count, threads)
    click.echo(f"MNIST test split, {len(subset(len(images), count))} images per variant (seed {SEED})")
    click.echo("\n".join(table(results)))
    if json_path is not None:
        json_path.write_text(json.dumps({"seed": SEED, "limit": count, "results": results}, indent=2) + "\n")
    if card is not None:
        record_in_card(card, results, len(subset(len(images), count)))


def record_in_card(card_path: Path, results: dict[str, dict[str, Any]], images_per_variant: int) -> None:
    """The card's own model (its ``litert_file`` beside it) under ``robustness``, the others as baselines."""
    card = json.loads(card_path.read_text())
    own = (card_path.parent / card.get("litert_file", "")).resolve()
    accuracy = {
        model: {variant: round(row["accuracy"], 4) for variant, row in rows.items()} for model, rows in results.items()
    }
    ece = {model: {variant: row.get("ece") for variant, row in rows.items()} for model, rows in results.items()}
    card["robustness"] = {
        "seed": SEED,
        "preprocess_version": PREPROCESS_VERSION,
        "images_per_variant": images_per_variant,
        "accuracy": next((rows for model, rows in accuracy.items() if Path(model).resolve() == own), {}),
        "ece": next((rows for model, rows in ece.items() if Path(model).resolve() == own), {}),
        "baselines": {model: rows for model, rows in accuracy.items() if Path(model).resolve() != own},
        "baselines_ece": {model: rows for model, rows in ece.items() if Path(model).resolve() != own},
    }
    card_path.write_text(json.dumps(card, indent=2) + "\n")


if __name__ == "__main__":
    main()
