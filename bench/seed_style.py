"""The seed design, measured for reference only: never used by mnist-queue itself.

One Celery task per image; each task reads its one row, ``np.load``s it, calls Keras'
``model.predict`` on a single image and INSERTs one prediction in its own transaction.
Its worker is started by the benchmark as ``python -m bench.seed_style [celery worker options]``.
"""

from __future__ import annotations

import io
import os
import sys
from typing import Any

import numpy as np
import psycopg
from celery import Celery, signals

from shared import jobs
from shared.config import Settings, load_settings
from shared.models.files import model_version

SEED_TASK = "bench.seed_style.predict_one"


def seed_queue(settings: Settings) -> str:
    return f"{settings.queue_prefix}.seed"


def make_app(settings: Settings) -> Celery:
    """The seed's Celery app, for the benchmark that sends its tasks and for the worker that runs them."""
    app = Celery("seed_style", broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue=seed_queue(settings),
    )
    loaded: dict[str, Any] = {}

    def load_model(**_: Any) -> None:
        import keras  # in each pool process after the fork: TensorFlow is not fork-safe

        loaded["model"] = keras.models.load_model(settings.model_path, compile=False)
        loaded["connection"] = psycopg.connect(settings.database_url)

    @app.task(name=SEED_TASK)
    def predict_one(job_id: int, image_id: int) -> None:
        conn = loaded["connection"]
        with conn.transaction(), conn.cursor() as cursor:
            cursor.execute("SELECT image_data FROM input_data WHERE id = %s", (image_id,))
            image = np.load(io.BytesIO(bytes(cursor.fetchone()[0])), allow_pickle=False)
            probabilities = loaded["model"].predict(image.reshape(1, 28, 28, 1).astype("float32") / 255.0, verbose=0)[0]
            cursor.execute(
                "INSERT INTO predictions (input_data_id, job_id, model_version, predicted_label, confidence,"
                " prediction_probabilities) VALUES (%s, %s, %s, %s, %s, %s)",
                (
                    image_id,
                    job_id,
                    model_version(settings.model_path),
                    int(probabilities.argmax()),
                    float(probabilities.max()),
                    probabilities.astype("<f4").tobytes(),
                ),
            )
            cursor.execute("UPDATE jobs SET done_count = done_count + 1 WHERE id = %s", (job_id,))
            # Not the seed's: the notice the benchmark's clock sleeps on (shared.jobs.progress).
            cursor.execute("SELECT pg_notify(%s, %s)", (jobs.progress.CHANNEL, str(job_id)))

    signals.worker_process_init.connect(load_model, weak=False, dispatch_uid="bench-seed-load-model")
    return app


def main(extra_args: list[str]) -> None:
    """Run the seed's worker on its queue; ``extra_args`` (Celery worker options) last, so they win."""
    settings = load_settings()
    hostname = f"seed-{os.getpid()}@%h"
    make_app(settings).worker_main(
        ["worker", "--queues", seed_queue(settings), "--hostname", hostname, "--loglevel", "INFO", *extra_args]
    )


if __name__ == "__main__":
    main(sys.argv[1:])
