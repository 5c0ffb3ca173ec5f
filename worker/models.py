"""The model versions one worker process serves: loaded from PostgreSQL when a job asks, the few most recent kept.

Like Triton's model repository with TF Serving's version labels: a job records the version it
was submitted with (``production`` resolved then, or a pinned one), and the worker loads that
version's file from the ``models`` table on first use, so moving an alias needs no restart and
two jobs on two versions run side by side in one process. At most MODEL_CACHE_SIZE versions
stay loaded (least recently used out). A version that cannot be loaded fails the images that
asked for it, with the reason, and nothing else.
"""

from __future__ import annotations

import logging
import tempfile
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shared import jobs, models, observability
from shared.config import Settings
from shared.digits import IMAGE_SHAPE
from shared.jobs.results import FailureRow
from shared.models.runtime import LiteRTPredictor, Predictor
from worker.batch import DatabaseLane

log = logging.getLogger(__name__)


class ModelUnavailable(Exception):
    """A version a job asks for cannot be served: not registered, or its file does not load.
    One line, for the failures."""


class ModelCache:
    """Predictors by version, least recently used first out."""

    def __init__(self, settings: Settings, threads: int) -> None:
        self.settings = settings
        self.threads = threads
        self._loaded: OrderedDict[str, Predictor] = OrderedDict()

    def loaded_versions(self) -> list[str]:
        """Oldest use first."""
        return list(self._loaded)

    def predictor(self, lane: DatabaseLane, version: str | None) -> Predictor:
        """The loaded predictor of ``version``, loading it first if need be; ModelUnavailable when it cannot be."""
        version = require_version(version)
        predictor = self._loaded.pop(version, None)
        if predictor is None:
            predictor = self._load(lane, version)
            while len(self._loaded) >= max(1, self.settings.model_cache_size):
                evicted, _ = self._loaded.popitem(last=False)
                log.info("model %s unloaded (MODEL_CACHE_SIZE=%d)", evicted, self.settings.model_cache_size)
        self._loaded[version] = predictor
        return predictor

    def _load(self, lane: DatabaseLane, version: str) -> Predictor:
        runtime = self.settings.model_runtime
        files = lane.submit(models.store.serving_files, version, runtime == "tensorflow").result()  # outages propagate
        if files is None:
            raise ModelUnavailable(f"model version {version} is not registered")
        try:
            predictor, variant = build_predictor(files, runtime, self.settings.model_precision, self.threads)
            predictor.predict_batch(
                np.zeros((1, *IMAGE_SHAPE), dtype=np.uint8)
            )  # allocates, and shows a broken file now
        except Exception as error:  # a runtime raises many kinds for a file it cannot read
            log.exception("model %s cannot be loaded", version)
            raise ModelUnavailable(f"model version {version} cannot be loaded: {one_line(error)}") from error
        log.info("loaded model %s (%s, %d threads)", version, variant, self.threads)
        return predictor

    def warm_up(self, lane: DatabaseLane) -> None:
        """Load production's version before the first job, so the first batch is not slow; never fatal."""
        try:
            self.predictor(lane, lane.submit(models.store.resolve, models.registry.PRODUCTION).result())
        except Exception as error:  # the database may be starting, the registry empty: jobs load it on demand
            log.warning("production model not loaded ahead of the first job: %s", one_line(error))


def require_version(version: str | None) -> str:
    """The version to serve; ModelUnavailable for None: the job names none and no model is aliased production."""
    if version is None:
        raise ModelUnavailable("no model is aliased production (python -m producer models alias production VERSION)")
    return version


def build_predictor(files: dict[str, Any], runtime: str, precision: str, threads: int) -> tuple[Predictor, str]:
    """A predictor of a version's stored files and which of them it runs."""
    if runtime == "tensorflow":
        from shared.models import keras_runtime

        keras_runtime.configure_threads(threads)
        with tempfile.NamedTemporaryFile(suffix=".keras") as keras_file:  # Keras reads models from files only
            keras_file.write(files["keras_bytes"])
            keras_file.flush()
            return keras_runtime.KerasPredictor(keras_runtime.load_model(Path(keras_file.name))), "Keras on TensorFlow"
    variant = models.registry.serving_variant(files["card"], files["int8_bytes"] is not None, precision)
    content = files["int8_bytes"] if variant == "int8" else files["tflite_bytes"]
    return LiteRTPredictor(content, threads), f"{variant} LiteRT"


def fail_images(lane: DatabaseLane, version: str | None, job_id: int, image_ids: Sequence[int], reason: str) -> int:
    """Record every image of a bulk batch as failed with ``reason``; returns how many failures were new."""
    log.error("job %s: %d images failed: %s", job_id, len(image_ids), reason)
    failures = [FailureRow(image_id, reason) for image_id in dict.fromkeys(image_ids)]
    _, failed = lane.submit(jobs.results.store_results, job_id, version or "", None, failures).result()
    observability.metrics.record_results(observability.metrics.BULK, version or "", 0, failed)
    return failed


def one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__
