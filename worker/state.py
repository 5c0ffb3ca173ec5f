"""What one worker process holds: its settings, its model, its database lane and its Celery app.

One home for per-process state. The model and the database lane are made on first use,
that is in the pool process after the fork: TensorFlow, LiteRT threads and database
connections do not survive a fork.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
from celery import Celery

from shared.config import Settings
from shared.digits import IMAGE_SHAPE
from shared.inference import Predictor, load_predictor
from shared.model_info import model_version
from worker.batch import DatabaseLane

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ProcessState:
    settings: Settings
    app: Celery | None = None
    # How many pool processes share the CPUs: set in the parent before the pool forks.
    pool_processes: int = 1
    _predictor: Predictor | None = None
    _lane: DatabaseLane | None = None

    def predictor(self) -> Predictor:
        if self._predictor is None:
            threads = self.settings.inference_threads(self.pool_processes)
            self._predictor = load_predictor(self.settings.model_path, self.settings.model_runtime, threads)
            log.info("loaded %s (%s runtime, %d threads)", self.settings.model_path, self.settings.model_runtime, threads)
        return self._predictor

    def lane(self) -> DatabaseLane:
        if self._lane is None:
            self._lane = DatabaseLane(self.settings.database_url)
        return self._lane

    def model_version(self) -> str:
        return model_version(self.settings.model_path)

    def warm_up(self) -> None:
        """Load and trace the model before the first task, so the first batch is not slow."""
        self.predictor().predict_batch(np.zeros((1, *IMAGE_SHAPE), dtype=np.uint8))


_current: ProcessState | None = None


def init(settings: Settings, app: Celery | None = None) -> ProcessState:
    global _current
    _current = ProcessState(settings, app)
    return _current


def current() -> ProcessState:
    if _current is None:
        raise RuntimeError("the worker process state is not initialised: start workers with python -m worker")
    return _current
