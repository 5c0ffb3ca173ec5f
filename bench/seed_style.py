"""The seed design, measured for reference only: never used by mnist-queue itself.

One Celery task per image; each task reads its one row, ``np.load``s it, calls Keras'
``model.predict`` on a single image and INSERTs one prediction in its own transaction.
Started as ``celery -A bench.seed_style worker`` by the benchmark.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import psycopg2
from celery import Celery, signals

from shared.config import settings
from shared.model_info import model_version

SEED_TASK = "bench.seed_style.predict_one"


def seed_queue() -> str:
    return f"{settings().queue_prefix}.seed"


app = Celery("seed_style", broker=settings().redis_url, set_as_current=False)
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1, task_ignore_result=True, task_default_queue=seed_queue())

_model: Any = None
_connection: Any = None


@signals.worker_process_init.connect
def load_model(**_: Any) -> None:
    global _model, _connection
    import keras

    _model = keras.models.load_model(settings().model_path, compile=False)
    _connection = psycopg2.connect(settings().database_url)


@app.task(name=SEED_TASK)
def predict_one(job_id: int, image_id: int) -> None:
    with _connection, _connection.cursor() as cursor:
        cursor.execute("SELECT image_data FROM input_data WHERE id = %s", (image_id,))
        image = np.load(io.BytesIO(bytes(cursor.fetchone()[0])), allow_pickle=False)
        probabilities = _model.predict(image.reshape(1, 28, 28, 1).astype("float32") / 255.0, verbose=0)[0]
        cursor.execute(
            "INSERT INTO predictions (input_data_id, job_id, model_version, predicted_label, confidence, prediction_probabilities)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (
                image_id,
                job_id,
                model_version(settings().model_path),
                int(probabilities.argmax()),
                float(probabilities.max()),
                psycopg2.Binary(probabilities.astype("<f4").tobytes()),
            ),
        )
        cursor.execute("UPDATE jobs SET done_count = done_count + 1 WHERE id = %s", (job_id,))
