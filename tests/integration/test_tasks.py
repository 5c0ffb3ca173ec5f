"""Queues on the real Redis: each message lands in exactly the queue it was sent to."""

import dataclasses

from shared import upload_queue
from shared.config import settings
from shared.tasks import bulk_queue, celery_app, enqueue_batches, queued_messages
from tests.services import unique_name


def test_bulk_batches_and_uploads_each_land_in_their_own_queue():
    config = dataclasses.replace(settings(), queue_prefix=unique_name("mnistq-routing"))
    app = celery_app(config)
    with app.connection_for_write() as connection:
        for queue in app.amqp.queues.values():  # bind the queue as a consuming worker does
            queue(connection.default_channel).declare()
        try:
            assert enqueue_batches(app, 1, list(range(10)), 4, bulk_queue(config)) == 3
            upload_queue.enqueue(config, 2, [7])
            assert (queued_messages(app, bulk_queue(config)), upload_queue.waiting(config)) == (3, 1)
        finally:
            for queue in app.amqp.queues.values():
                queue(connection.default_channel).delete()
            upload_queue.client(config.redis_url).delete(upload_queue.queue_name(config))


def test_an_unknown_queue_holds_no_messages():
    config = dataclasses.replace(settings(), queue_prefix=unique_name("mnistq-never-declared"))
    assert queued_messages(celery_app(config), bulk_queue(config)) == 0


def test_the_bulk_queue_has_its_own_exchange_for_senders_and_workers_alike():
    from worker.app import app as worker_app

    def bindings(app):
        return {(queue.name, queue.exchange.name, queue.routing_key) for queue in app.amqp.queues.values()}

    expected = {(bulk_queue(settings()),) * 3}
    assert bindings(celery_app(settings())) == expected
    assert bindings(worker_app) == expected
