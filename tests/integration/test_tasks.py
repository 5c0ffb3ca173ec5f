"""Queues on the real Redis: each message lands in exactly the queue it was sent to."""

from shared import jobs, queues
from stack.scratch import unique_name
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
            assert (queues.broker.queued_messages(app, queues.broker.bulk_queue(config)), queues.uploads.waiting(config)) == (3, 1)
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
