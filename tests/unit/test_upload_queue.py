"""The upload queue's entries, "job:image[:deaths]", encoded and decoded without Redis."""

from __future__ import annotations

import pytest

from shared import queues
from shared.digits import MAX_ROW_ID
from shared.queues.uploads import decode_entry, encode_entry, one_more_death


def test_a_new_entry_is_job_colon_image():
    assert encode_entry(12, 34) == "12:34"
    assert decode_entry(b"12:34") == (12, 34, 0)


@pytest.mark.parametrize("job_id, image_id, deaths", [(1, 2, 0), (1, 2, 1), (MAX_ROW_ID, MAX_ROW_ID, 7)])
def test_entries_round_trip(job_id, image_id, deaths):
    assert decode_entry(encode_entry(job_id, image_id, deaths).encode()) == (job_id, image_id, deaths)


def test_each_consumer_that_dies_holding_an_entry_is_counted_on_it():
    entry = encode_entry(5, 9).encode()
    for expected in (1, 2, 3):
        entry = one_more_death(entry).encode()
        assert decode_entry(entry) == (5, 9, expected)
    assert entry == b"5:9:3"


@pytest.mark.parametrize("foreign", [b"1:2:3:4", b"hello", b"5", b"", b"job:image", b"1:two"])
def test_a_foreign_entry_is_refused_and_requeued_unchanged(foreign):
    with pytest.raises(ValueError):
        decode_entry(foreign)
    assert one_more_death(foreign) == foreign  # not ours: passed on as it is, for the consumer to drop


def test_names_are_under_the_queue_prefix(default_settings):
    config = default_settings.replace(queue_prefix="p")
    assert queues.uploads.queue_name(config) == "p.upload"
    assert queues.uploads.processing_list(config, "host-1") == "p.upload.processing.host-1"
    assert queues.uploads.heartbeat_key(config, "host-1") == "p.upload.alive.host-1"
    assert queues.uploads.consumers_key(config) == "p.upload.consumers"


def test_consumer_names_start_with_the_host_and_are_unique():
    first, second = queues.uploads.new_consumer_name(), queues.uploads.new_consumer_name()
    assert first.startswith(queues.uploads.host_prefix()) and second.startswith(queues.uploads.host_prefix())
    assert first != second
