"""Where a service's processes keep their metrics, and how one scrape adds them up.

The web runs several processes (``web/serve.py``), and ``python -m worker`` runs the bulk Celery
worker, its pool processes and the upload consumer; a scrape reaches one process, which must answer for all.
So each start of a service (``web/serve.py`` before its processes start, ``python -m worker``)
makes a fresh folder, ``<METRICS_DIR>/<service>-<pid>``, wiped and handed to its processes in
PROMETHEUS_MULTIPROC_DIR (``prepare``); prometheus_client then keeps each process's values in
memory-mapped files there, and a scrape sums them (``scrape_registry``). Counters of processes
that exited stay in the sum, so totals never go back; the gauges of a process that exited are
dropped at the next scrape (``forget_dead_processes``), so "processes up" counts live ones only,
also after a ``kill -9``.

A process whose settings name no folder (``flask run``, the tests' app) keeps its metrics in
memory and its scrape shows its own.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, exposition, multiprocess, values
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from shared.config import Settings

MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# prometheus_client's files of the gauges that count only while their process lives.
LIVE_GAUGE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")


def service_directory(settings: Settings, service: str) -> Path:
    """This start's folder: one per start, so two services (or two workers) on one machine never share one."""
    return settings.metrics_base_dir() / f"{service}-{os.getpid()}"


def prepare(directory: Path) -> Path:
    """Wipe and create ``directory`` and make it this process's and its children's metrics folder.

    Call before the first metric is made (``shared.observability.metrics.instruments``). prometheus_client picks
    where values live when it is imported, from PROMETHEUS_MULTIPROC_DIR at that moment; an entry
    point that imported it before the variable was set has it pick again here.
    """
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(mode=0o700, parents=True)
    os.environ[MULTIPROCESS_VARIABLE] = str(directory)  # read by prometheus_client in every process below this one
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.get_value_class()
    return directory


def remove(directory: Path) -> None:
    """At the service's end: its folder is of no use to the next start, which makes its own."""
    shutil.rmtree(directory, ignore_errors=True)


def mark_process_dead(directory: Path, pid: int) -> None:
    """A process of the service exited: its live gauges stop counting (its counters stay in the sums)."""
    multiprocess.mark_process_dead(pid, str(directory))


def forget_dead_processes(directory: Path) -> list[int]:
    """Drop the live gauges of every process that is gone, however it ended; returns their pids."""
    dead = set()
    for path in directory.iterdir():
        match = LIVE_GAUGE_FILE.match(path.name)
        if match and not process_exists(int(match.group(1))):
            dead.add(int(match.group(1)))
    for pid in dead:
        mark_process_dead(directory, pid)
    return sorted(dead)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: it exists
        return True
    return True


class LiveProcessesCollector(multiprocess.MultiProcessCollector):
    """prometheus_client's sum over the folder's files, after forgetting the processes that are gone."""

    def __init__(self, directory: Path, registry: CollectorRegistry | None = None) -> None:
        self.directory = directory
        super().__init__(registry, str(directory))

    def collect(self) -> Iterable[Metric]:
        forget_dead_processes(self.directory)
        return super().collect()


class ThisProcess(Collector):
    """The default registry's metrics: what a process without a metrics folder recorded itself."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


def scrape_registry(directory: Path | None, extra: Iterable[Collector] = ()) -> CollectorRegistry:
    """What one scrape shows: every process of the service (or this one alone) and the ``extra`` collectors."""
    registry = CollectorRegistry()
    if directory is not None and directory.is_dir():
        LiveProcessesCollector(directory, registry)
    else:
        registry.register(ThisProcess())
    for collector in extra:
        registry.register(collector)
    return registry


def exposition_text(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The scrape's body and content type: OpenMetrics when the scraper asks for it, else Prometheus' text format."""
    encoder, content_type = exposition.choose_encoder(accept or "")
    return encoder(registry), content_type
