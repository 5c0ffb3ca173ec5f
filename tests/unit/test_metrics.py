"""The metrics without services: entry stamps and Celery messages parsed, the queue gauges, several
processes' files summed (and a dead one's live gauges dropped), the web's /metrics and its token.

A real Prometheus scraping a real web and worker is tests/integration/test_metrics.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from decimal import Decimal

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shared import observability, queues
from shared.config import PROJECT_ROOT, load_settings
from shared.observability.queues import QueueReading, celery_message_sent_at, oldest_age, queue_families
from web.app import create_app

NO_REDIS = "unix:///nonexistent/mnist-queue-test-redis.sock"  # fails at once, and opens no network socket


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a scrape."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_an_upload_entry_carries_when_it_was_accepted_without_changing_what_it_says():
    entry = queues.uploads.encode_entry(12, 34, accepted_at=1_712_345_678.1234).encode()
    assert entry == b"12:34@1712345678123"
    assert queues.uploads.decode_entry(entry) == (12, 34, 0)
    assert queues.uploads.accepted_at(entry) == pytest.approx(1_712_345_678.123)
    assert not queues.uploads.is_marked(entry)  # one colon: a fresh entry, which may join a micro-batch
    died = queues.uploads.one_more_death(entry).encode()
    assert died == b"12:34:1@1712345678123" and queues.uploads.is_marked(died)
    assert queues.uploads.decode_entry(died) == (12, 34, 1) and queues.uploads.accepted_at(
        died
    ) == queues.uploads.accepted_at(entry)


@pytest.mark.parametrize("entry", [b"12:34", b"12:34:2", b"garbage", b"1:2@"])
def test_an_entry_without_a_stamp_has_no_accepted_time(entry):
    assert queues.uploads.accepted_at(entry) is None


@pytest.mark.parametrize("foreign", [b"1:2@soon", b"1:2@3@4", b"1:2@-5"])
def test_an_entry_with_a_stamp_that_is_not_ours_is_refused(foreign):
    with pytest.raises(ValueError):
        queues.uploads.decode_entry(foreign)


def celery_message(headers: dict) -> bytes:
    """A message as kombu's Redis transport stores it (the body does not matter here)."""
    return json.dumps({"body": "W10=", "content-encoding": "utf-8", "headers": headers, "properties": {}}).encode()


def test_a_celery_message_gives_the_send_time_our_sender_put_in_its_headers():
    assert (
        celery_message_sent_at(
            celery_message({"task": queues.broker.PREDICT_BATCH_TASK, queues.broker.SENT_AT_HEADER: 1700000000.5})
        )
        == 1700000000.5
    )
    assert (
        celery_message_sent_at(celery_message({"task": queues.broker.PREDICT_BATCH_TASK})) is None
    )  # an older sender's
    assert celery_message_sent_at(celery_message({queues.broker.SENT_AT_HEADER: "yesterday"})) is None
    assert celery_message_sent_at(b"not json") is None
    assert celery_message_sent_at(b"[1, 2]") is None
    assert celery_message_sent_at(None) is None


def test_an_empty_queue_is_zero_seconds_old_and_an_unstamped_one_has_no_age():
    assert oldest_age(0, None, now=100.0) == 0.0
    assert oldest_age(3, 90.0, now=100.0) == 10.0
    assert oldest_age(3, 101.0, now=100.0) == 0.0  # another machine's clock a little ahead
    assert oldest_age(3, None, now=100.0) is None


def test_the_queue_gauges_have_the_names_keda_and_celery_exporter_users_expect():
    readings = [QueueReading("bulk", "p.bulk", 7, 12.5), QueueReading("upload", "p.upload", 2, None)]

    class Readings:
        def collect(self):
            return queue_families(readings)

    registry = CollectorRegistry()
    registry.register(Readings())
    scraped = samples(generate_latest(registry).decode())
    assert scraped[("mnist_queue_depth", (("queue", "bulk"),))] == 7  # deploy/kubernetes/keda/prometheus.yaml's query
    assert scraped[("mnist_queue_depth", (("queue", "upload"),))] == 2
    assert scraped[("mnist_queue_oldest_age_seconds", (("queue", "bulk"),))] == 12.5
    assert ("mnist_queue_oldest_age_seconds", (("queue", "upload"),)) not in scraped  # unknown, not 0
    assert scraped[("celery_queue_length", (("queue_name", "p.bulk"),))] == 7


def test_the_keda_prometheus_trigger_reads_the_exported_gauge():
    manifest = (PROJECT_ROOT / "deploy" / "kubernetes" / "keda" / "prometheus.yaml").read_text()
    assert 'query: max(mnist_queue_depth{queue="bulk"})' in manifest


RECORD_IN_A_PROCESS = textwrap.dedent(
    """
    import sys
    from shared import observability
    observability.metrics.record_results(observability.metrics.BULK, "v1", int(sys.argv[1]), 1)
    observability.metrics.record_process(observability.metrics.BULK_POOL)
    observability.metrics.record_queue_wait(observability.metrics.BULK, 0.2)
    """
)


def record_in_a_process(directory, predicted: int) -> None:
    """A separate process that records into ``directory`` and ends, as a pool process does."""
    env = {**os.environ, observability.files.MULTIPROCESS_VARIABLE: str(directory)}
    subprocess.run([sys.executable, "-c", RECORD_IN_A_PROCESS, str(predicted)], cwd=PROJECT_ROOT, env=env, check=True)


def test_a_scrape_sums_every_process_and_forgets_the_live_gauges_of_those_that_ended(tmp_path):
    directory = tmp_path / "metrics"
    directory.mkdir()
    record_in_a_process(directory, 3)
    record_in_a_process(directory, 4)
    assert len(list(directory.glob("gauge_livesum_*.db"))) == 2

    scraped = samples(generate_latest(observability.files.scrape_registry(directory)).decode())
    assert (
        scraped[("mnist_images_predicted_total", (("model_version", "v1"), ("queue", "bulk")))] == 7
    )  # counters stay summed
    assert scraped[("mnist_images_failed_total", (("model_version", "v1"), ("queue", "bulk")))] == 2
    assert scraped[("mnist_batch_stage_seconds_count", (("queue", "bulk"), ("stage", "queue_wait")))] == 2
    assert ("mnist_worker_processes", (("role", "bulk_pool"),)) not in scraped  # both ended: none counted
    assert list(directory.glob("gauge_livesum_*.db")) == []


def test_a_live_process_is_counted(tmp_path):
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / f"gauge_livesum_{os.getpid()}.db").write_bytes(b"")
    assert observability.files.forget_dead_processes(directory) == []
    assert (directory / f"gauge_livesum_{os.getpid()}.db").exists()


def test_prepare_wipes_the_folder_a_start_gets(tmp_path, monkeypatch):
    monkeypatch.delenv(observability.files.MULTIPROCESS_VARIABLE, raising=False)
    settings = load_settings({"METRICS_DIR": str(tmp_path)})
    directory = observability.files.service_directory(settings, "web")
    assert directory == tmp_path / f"web-{os.getpid()}"
    directory.mkdir()
    (directory / "counter_1.db").write_bytes(b"left by an earlier start")
    # In a child, as the entry points do: prepare switches prometheus_client to files even after it was imported.
    code = (
        "from pathlib import Path; from shared import observability;"
        f" observability.files.prepare(Path({str(directory)!r}));"
    )
    code += " observability.metrics.record_refusal(429, 'upload_queue_full')"
    subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, check=True)
    assert not (directory / "counter_1.db").exists()
    scraped = samples(generate_latest(observability.files.scrape_registry(directory)).decode())
    assert scraped[("mnist_web_refusals_total", (("reason", "upload_queue_full"), ("status", "429")))] == 1
    assert load_settings({}).metrics_base_dir().name == "mnist-queue-metrics"


def web_settings(**environ: str):
    return load_settings({"REDIS_URL": NO_REDIS, "UPLOAD_RATE_LIMIT": "off", "SIGNIN_RATE_LIMIT": "off", **environ})


def test_the_web_serves_its_metrics_in_prometheus_text_format_without_sign_in():
    client = create_app({"TESTING": True}, settings=web_settings()).test_client()
    observability.metrics.record_refusal(503, "database")
    response = client.get("/metrics")
    assert response.status_code == 200 and response.content_type.startswith("text/plain; version=0.0.4")
    assert (
        samples(response.get_data(as_text=True))[
            ("mnist_web_refusals_total", (("reason", "database"), ("status", "503")))
        ]
        >= 1
    )
    assert "mnist_queue_depth" not in response.get_data(
        as_text=True
    )  # Redis is down: the queues are left out, not an error
    openmetrics = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert openmetrics.content_type.startswith("application/openmetrics-text") and openmetrics.get_data(
        as_text=True
    ).endswith("# EOF\n")


def test_metrics_token_guards_the_route_when_set():
    client = create_app({"TESTING": True}, settings=web_settings(METRICS_TOKEN="s3cret-token")).test_client()
    refused = client.get("/metrics")
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200


def test_worker_metrics_settings():
    assert (load_settings({}).worker_metrics_port, load_settings({}).worker_metrics_host) == (9808, "0.0.0.0")
    assert load_settings({"WORKER_METRICS_PORT": "0"}).worker_metrics_port == 0
    with pytest.raises(ValueError, match="WORKER_METRICS_PORT"):
        load_settings({"WORKER_METRICS_PORT": "-1"})


def test_the_store_counts_may_be_decimals_and_a_failed_recording_never_fails_the_batch(caplog):
    labels = {"queue": "bulk", "model_version": "decimal-test"}
    observability.metrics.record_results("bulk", "decimal-test", Decimal("5"), 0)  # what a SQL sum() gives
    assert REGISTRY.get_sample_value("mnist_images_predicted_total", labels) == 5
    observability.metrics.record_batch(
        "bulk", "v", 1, 1, 0, {"no such stage": 0.1, "fetch": "not a number"}
    )  # a bug of ours: logged
    assert "metrics: record_batch failed" in caplog.text


def test_every_recording_of_the_lanes_logs_its_own_errors(caplog):
    """They run after a commit: an error there must never reach the failure path
    (a prediction and a failure for one upload)."""
    lanes = ("batch", "uploads", "models", "tasks", "shadow", "failover", "sweeper")
    called = {
        name
        for lane in lanes
        for name in re.findall(r"\bmetrics\.(\w+)\(", (PROJECT_ROOT / "worker" / f"{lane}.py").read_text())
    }
    assert {"record_batch", "record_results", "record_upload_latencies", "record_failover_restored"} <= called
    guarded = observability.metrics.never_fails(lambda: None).__code__
    assert [
        name for name in sorted(called) if getattr(observability.metrics, name).__code__ is not guarded
    ] == []  # all never_fails
    observability.metrics.record_upload_latencies(["not a number"])  # observe_many runs inside it
    assert "metrics: record_upload_latencies failed" in caplog.text


def test_many_observations_at_once_count_as_one_by_one():
    values = [0.0, 0.001, 0.0011, 0.004, 0.004, 0.25, 7.0, 61.0, 1e9]  # bounds themselves, between, beyond the last
    one_by_one, at_once = CollectorRegistry(), CollectorRegistry()
    for registry in (one_by_one, at_once):
        histogram = Histogram(
            "latency_seconds", "test", buckets=observability.metrics.LATENCY_BUCKETS, registry=registry
        )
        if registry is one_by_one:
            for value in values:
                histogram.observe(value)
        else:
            observability.metrics.observe_many(histogram, values)

    def counts(registry: CollectorRegistry) -> dict:
        return {
            key: value
            for key, value in samples(generate_latest(registry).decode()).items()
            if not key[0].endswith("_created")
        }

    assert len(counts(at_once)) == len(observability.metrics.LATENCY_BUCKETS) + 3  # each bucket, +Inf, _count, _sum
    assert counts(at_once) == counts(one_by_one)
