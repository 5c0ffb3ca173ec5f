"""What one worker process holds: its settings, its loaded models, its database lanes and its Celery app.

One home for per-process state. The models and the database lane are made on first use,
that is in the pool process after the fork: TensorFlow, LiteRT threads and database
connections do not survive a fork. Models are loaded by version, as jobs ask (worker/models.py).
"""

from __future__ import annotations

import dataclasses
import logging

from celery import Celery

from shared.config import Settings
from worker.batch import DatabaseLane
from worker.models import ModelCache

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ProcessState:
    settings: Settings
    app: Celery | None = None
    # How many pool processes share the CPUs: set in the parent before the pool forks.
    pool_processes: int = 1
    _models: ModelCache | None = None
    _lane: DatabaseLane | None = None
    _lifecycle_lane: DatabaseLane | None = None

    def models(self) -> ModelCache:
        if self._models is None:
            self._models = ModelCache(self.settings, self.settings.inference_threads(self.pool_processes))
        return self._models

    def lane(self) -> DatabaseLane:
        if self._lane is None:
            self._lane = DatabaseLane(self.settings.database_url)
        return self._lane

    def lifecycle_lane(self) -> DatabaseLane:
        """A second lane, with its own connection, for what a finished batch sets going (its job's next
        batch, its end): on the first lane it would make the next batch's reads wait a round trip or two."""
        if self._lifecycle_lane is None:
            self._lifecycle_lane = DatabaseLane(self.settings.database_url)
        return self._lifecycle_lane

    def warm_up(self) -> None:
        """Load production's model before the first task, so the first batch is not slow."""
        self.models().warm_up(self.lane())


_current: ProcessState | None = None


def init(settings: Settings, app: Celery | None = None) -> ProcessState:
    global _current
    _current = ProcessState(settings, app)
    return _current


def current() -> ProcessState:
    if _current is None:
        raise RuntimeError("the worker process state is not initialised: start workers with python -m worker")
    return _current
