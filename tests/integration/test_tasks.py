"""Queues on the real Redis: each message lands in exactly the queue it was sent to; and the task's retry policy."""

import types

import psycopg
import pytest
from celery import Task

from shared import jobs, queues
from stack.scratch import unique_name
from worker import state
from worker import tasks as task_module
from worker.app import make_celery_app


def test_bulk_batches_and_uploads_each_land_in_their_own_queue(settings):
    config = settings.replace(queue_prefix=unique_name("mnistq-routing"))
    app = queues.broker.celery_app(config)
    with app.connection_for_write() as connection:
        for queue in app.amqp.queues.values():  # bind the queue as a consuming worker does
            queue(connection.default_channel).declare()
        try:
            assert jobs.service.enqueue_bulk(app, config, 1, list(range(10)), 4) == 3
            queues.uploads.enqueue(config, 2, [7])
            assert (
                queues.broker.queued_messages(app, queues.broker.bulk_queue(config)),
                queues.uploads.waiting(config),
            ) == (3, 1)
        finally:
            for queue in app.amqp.queues.values():
                queue(connection.default_channel).delete()
            queues.uploads.client(config.redis_url).delete(queues.uploads.queue_name(config))


def test_an_unknown_queue_holds_no_messages(settings):
    config = settings.replace(queue_prefix=unique_name("mnistq-never-declared"))
    assert queues.broker.queued_messages(queues.broker.celery_app(config), queues.broker.bulk_queue(config)) == 0


def test_the_bulk_queue_has_its_own_exchange_for_senders_and_workers_alike(settings):
    def bindings(app):
        return {(queue.name, queue.exchange.name, queue.routing_key) for queue in app.amqp.queues.values()}

    expected = {(queues.broker.bulk_queue(settings),) * 3}
    assert bindings(queues.broker.celery_app(settings)) == expected
    assert bindings(make_celery_app(settings)) == expected


class OutageLane:
    """A database lane whose every call meets an outage, as while PostgreSQL restarts."""

    def __init__(self) -> None:
        self.calls = 0

    def submit(self, function, *args):
        self.calls += 1
        raise psycopg.OperationalError("the database system is shutting down")


def bound_task(settings, monkeypatch, lane) -> Task:
    """The worker's registered task, run eagerly, its process state a fake that hands out ``lane``."""
    task = make_celery_app(settings).tasks[queues.broker.PREDICT_BATCH_TASK]
    process = types.SimpleNamespace(settings=settings, lane=lambda: lane, models=lambda: None)
    monkeypatch.setattr(state, "current", lambda: process)
    return task


def test_a_database_outage_is_retried_by_celery_with_a_capped_backoff_then_given_up(settings, monkeypatch):
    lane = OutageLane()
    task = bound_task(settings, monkeypatch, lane)
    countdowns = []
    retry = task.retry

    def counted_retry(*args, countdown=None, **kwargs):
        countdowns.append(countdown)
        return retry(*args, countdown=countdown, **kwargs)

    monkeypatch.setattr(task, "retry", counted_retry)
    monkeypatch.setattr(task_module, "split_batch", lambda *args: pytest.fail("an outage split the batch"))
    outcome = task.apply(args=[1, [10, 11]])
    assert outcome.failed() and isinstance(outcome.result, psycopg.OperationalError)
    assert lane.calls == 13  # the first run and twelve retries
    # Celery asks for one more after the twelfth; retry() refuses it, re-raising the outage.
    assert countdowns == [1, 2, 4, 8, 16, 30, 30, 30, 30, 30, 30, 30, 30]


def test_an_error_that_is_not_an_outage_splits_the_batch_and_is_not_retried(settings, monkeypatch):
    class BrokenLane:
        def submit(self, function, *args):
            raise ValueError("a bug, not an outage")

    task = bound_task(settings, monkeypatch, BrokenLane())
    monkeypatch.setattr(task, "retry", lambda *args, **kwargs: pytest.fail("a bug was retried"))
    splits = []

    def split(_task, _job_id, image_ids, _why):
        splits.append(image_ids)
        return {"done": 0, "failed": 0}

    monkeypatch.setattr(task_module, "split_batch", split)
    assert task.apply(args=[1, [10, 11]]).get() == {"done": 0, "failed": 0}
    assert splits == [[10, 11]]
