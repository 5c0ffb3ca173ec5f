"""docs/gen_benchmarks.py draws the throughput and latency plot from a bench JSON: the same bytes from the same
JSON (so --check can tell a stale plot), a panel only for the rows the run has, and the page's link to it."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from tests.support import docs_generators

REPORT = {
    "machine": {"cores": 2, "cpu": "a test CPU", "placement": "every process on every core"},
    "throughput": [
        {"what": "bare model", "images_per_second": 1000.0, "spread": 0.0},
        {"what": "mnist-queue, 1 worker process", "images_per_second": 400.0, "spread": 10.0},
    ],
    "latency": [
        {"what": "single uploads, idle", "uploads": 5, "p50_ms": 7.0, "p95_ms": 9.0, "p99_ms": 12.0},
        {"what": "peak RSS, web processes", "rss_mb": [30.0, 80.0]},
    ],
}
PAGE = "# Benchmarks\n\n<!-- bench-results:start -->\n<!-- bench-results:end -->\nAfter.\n"


@pytest.fixture
def generator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The generator with its page, kept JSON and plot moved into a scratch docs folder."""
    module = docs_generators.load("gen_benchmarks")
    docs = tmp_path / "docs"
    (docs / "data").mkdir(parents=True)
    (docs / "benchmarks.md").write_text(PAGE)
    monkeypatch.setattr(module, "ROOT", tmp_path)
    monkeypatch.setattr(module, "PAGE", docs / "benchmarks.md")
    monkeypatch.setattr(module, "KEPT", docs / "data" / "bench-latest.json")
    monkeypatch.setattr(module, "FRESH", tmp_path / "bench" / "results" / "latest.json")
    monkeypatch.setattr(module, "PLOT", docs / "images" / "bench-latest.svg")
    return module


def test_the_plot_is_the_same_svg_every_time_and_shows_the_rows(generator):
    first, second = generator.plot_svg(REPORT), generator.plot_svg(json.loads(json.dumps(REPORT)))
    assert first == second
    assert first.startswith("<?xml") and "<svg" in first
    assert "<dc:date>" not in first  # no time of drawing in the file
    assert "<text" not in first  # text is drawn as glyph outlines, the same in every browser


def test_a_panel_only_for_the_rows_the_run_has(generator):
    only_memory = {"latency": [{"what": "peak RSS, web processes", "rss_mb": [30.0]}]}
    assert generator.plot_svg(only_memory) is None and generator.plot_svg(None) is None
    assert [plot.__name__ for plot, _ in generator.plot_panels(REPORT)] == ["plot_throughput", "plot_latency"]
    no_latency = {"throughput": REPORT["throughput"]}
    assert [plot.__name__ for plot, _ in generator.plot_panels(no_latency)] == ["plot_throughput"]
    assert generator.plot_svg(no_latency) != generator.plot_svg(REPORT)


def test_the_page_links_the_plot_and_check_fails_when_either_is_stale(generator, tmp_path):
    source = tmp_path / "run.json"
    source.write_text(json.dumps(REPORT))
    assert generator.main([str(source)]) == 0
    page = generator.PAGE.read_text()
    assert "![Throughput and upload latency of this run](images/bench-latest.svg)" in page
    assert page.endswith("<!-- bench-results:end -->\nAfter.\n")
    assert generator.PLOT.read_text() == generator.plot_svg(REPORT)
    assert generator.main(["--check"]) == 0

    generator.PLOT.write_text(generator.PLOT.read_text().replace("<svg", "<svg data-edited='1'", 1))
    assert generator.main(["--check"]) == 1
    assert generator.main([]) == 0  # from the kept copy
    assert generator.main(["--check"]) == 0

    generator.KEPT.write_text(json.dumps({**REPORT, "throughput": REPORT["throughput"][:1]}))
    assert generator.main(["--check"]) == 1  # a new run kept, neither page nor plot redrawn
    assert generator.stale_files(json.loads(generator.KEPT.read_text())) == [generator.PAGE, generator.PLOT]


def test_a_run_without_plotted_rows_removes_the_plot_and_its_link(generator, tmp_path):
    source = tmp_path / "run.json"
    source.write_text(json.dumps(REPORT))
    generator.main([str(source)])
    source.write_text(json.dumps({"machine": REPORT["machine"], "latency": REPORT["latency"][1:]}))
    assert generator.main([str(source)]) == 0
    assert not generator.PLOT.exists() and "bench-latest.svg" not in generator.PAGE.read_text()
    assert generator.main(["--check"]) == 0


def test_the_committed_page_and_plot_are_what_the_kept_json_gives():
    module = docs_generators.load("gen_benchmarks")
    assert module.stale_files(json.loads(module.KEPT.read_text())) == [], "run python docs/gen_benchmarks.py"
