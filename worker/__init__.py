"""The Celery worker: holds the CNN once per process and predicts batches of stored images."""
