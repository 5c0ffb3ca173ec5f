"""Turn the JSON that `python -m bench` writes into the results section of docs/benchmarks.md.

    python docs/gen_benchmarks.py                      # bench/results/latest.json, else the kept copy
    python docs/gen_benchmarks.py path/to/latest.json  # another run
    python docs/gen_benchmarks.py --check              # exit 1 if the page or the plot is not what the kept copy gives

The run's JSON is kept as docs/data/bench-latest.json (bench/results/ is git-ignored), and the
page's text between the two markers is rewritten from it; the rest of the page is left alone.
A plot of the throughput and upload latency rows (matplotlib) goes to docs/images/bench-latest.svg,
drawn the same way from the same JSON every time, so --check can compare it byte for byte.
With no JSON anywhere the section says how to produce one.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib import ticker
from matplotlib.figure import Figure

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "benchmarks.md"
KEPT = ROOT / "docs" / "data" / "bench-latest.json"
FRESH = ROOT / "bench" / "results" / "latest.json"
PLOT = ROOT / "docs" / "images" / "bench-latest.svg"
# What makes the SVG the same bytes from the same JSON: fixed ids and no date (savefig below).
# Text is drawn as the outlines of the DejaVu Sans that matplotlib ships, so it looks the same in
# every browser and does not depend on the fonts of the machine that drew it.
SVG_SETTINGS = {"svg.hashsalt": "mnist-queue bench", "svg.fonttype": "path", "font.family": "DejaVu Sans"}
LABEL_WIDTH = 34  # characters per line of a bar's label
QUANTILES = (("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99"))
START, END = "<!-- bench-results:start -->", "<!-- bench-results:end -->"

NO_RESULTS = """No benchmark results are kept yet. Produce them with

```bash
python -m bench                        # writes bench/results/latest.json
python docs/gen_benchmarks.py          # turns it into this section
```
"""


def markdown_table(header: list[str], rows: list[list[str]], align: str) -> list[str]:
    """A Markdown table; align holds one letter per column, l or r."""
    rule = ["---:" if side == "r" else "---" for side in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def number(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def throughput_section(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    ceiling = max(row["images_per_second"] for row in rows)
    body = [
        [
            row["what"],
            number(row["images_per_second"]),
            number(row.get("spread", 0)),
            f"{row['images_per_second'] / ceiling:.3f}",
            ", ".join(f"{name} {us:g}" for name, us in row.get("cpu_us_per_image", {}).items()),
        ]
        for row in rows
    ]
    header = ["what", "images/s", "spread", "x fastest", "CPU µs per image"]
    return ["### Throughput", "", *markdown_table(header, body, "lrrrl"), ""]


def database_section(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    body = [
        [row["what"], number(row["postgres_us"], 1), number(row["client_us"], 1), number(row["wall_us"], 1)]
        for row in rows
    ]
    header = ["database step, per image", "PostgreSQL µs", "client µs", "wall µs"]
    return ["### Database steps", "", *markdown_table(header, body, "lrrr"), ""]


def latency_section(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    timed = [
        [row["what"], number(row["p50_ms"], 1), number(row["p95_ms"], 1), number(row["p99_ms"], 1)]
        for row in rows
        if "p50_ms" in row
    ]
    memory = [[row["what"], " ".join(f"{mb:.0f}" for mb in row["rss_mb"])] for row in rows if "rss_mb" in row]
    lines = ["### Upload latency and memory", ""]
    if timed:
        lines += [*markdown_table(["what", "p50 ms", "p95 ms", "p99 ms"], timed, "lrrr"), ""]
    if memory:
        lines += [*markdown_table(["peak RSS", "MB per process"], memory, "ll"), ""]
    return lines


def wrapped(label: str) -> str:
    return textwrap.fill(label, LABEL_WIDTH)


def plot_throughput(axes, rows: list[dict[str, Any]]) -> None:
    names = [wrapped(row["what"]) for row in rows][::-1]  # the first row on top
    rates = [row["images_per_second"] for row in rows][::-1]
    bars = axes.barh(names, rates, color="C0")
    axes.bar_label(bars, labels=[number(rate) for rate in rates], padding=3, fontsize=8)
    axes.set_title("Throughput", loc="left")
    axes.set_xlabel("images per second")
    axes.xaxis.set_major_formatter(ticker.StrMethodFormatter("{x:,.0f}"))
    axes.set_xlim(0, max(rates) * 1.2)  # room for the last bar's figure


def plot_latency(axes, rows: list[dict[str, Any]]) -> None:
    names = [wrapped(row["what"]) for row in rows]
    height = 0.8 / len(QUANTILES)
    for offset, (key, name) in enumerate(QUANTILES):
        values = [row[key] for row in rows]
        places = [index + (offset - 1) * height for index in range(len(rows))]
        bars = axes.barh(places, values, height=height, color=f"C{offset + 1}", label=name)
        axes.bar_label(bars, labels=[number(value, 1) for value in values], padding=3, fontsize=8)
    axes.set_yticks(range(len(rows)), names)
    axes.invert_yaxis()  # the first row on top, and p50 above p99 within a row
    axes.set_title("Upload latency", loc="left")
    axes.set_xlabel("milliseconds, accepted to answered")
    axes.set_xlim(0, max(row["p99_ms"] for row in rows) * 1.2)
    axes.legend(loc="upper right", frameon=False)


def plot_panels(report: dict[str, Any] | None) -> list[tuple[Callable[[Any, list[dict[str, Any]]], None], list]]:
    """Each panel the plot has, as its drawing function and its rows: none for a report without such rows."""
    throughput = (report or {}).get("throughput", [])
    timed = [row for row in (report or {}).get("latency", []) if "p50_ms" in row]
    return [(plot, rows) for plot, rows in ((plot_throughput, throughput), (plot_latency, timed)) if rows]


def plot_svg(report: dict[str, Any] | None) -> str | None:
    """The throughput and upload latency rows as one SVG; None when the report has neither."""
    panels = plot_panels(report)
    if not panels:
        return None
    with matplotlib.rc_context(SVG_SETTINGS):
        figure = Figure(figsize=(9, 2.2 + 0.45 * sum(len(rows) for _, rows in panels)), layout="constrained")
        grid = figure.add_gridspec(len(panels), 1, height_ratios=[len(rows) + 1 for _, rows in panels])
        for place, (plot, rows) in enumerate(panels):
            plot(figure.add_subplot(grid[place]), rows)
        out = io.StringIO()
        figure.savefig(out, format="svg", metadata={"Date": None})
    return out.getvalue()


def results_markdown(report: dict[str, Any] | None, source: str = "") -> str:
    if report is None:
        return NO_RESULTS
    machine = report.get("machine", {})
    where = (
        f"{machine.get('cores', '?')} cores, {machine.get('cpu', 'unknown CPU')}; {machine.get('placement', '')}"
    ).rstrip("; ")
    lines = [f"Generated by `docs/gen_benchmarks.py` from `{source}`. Machine: {where}.", ""]
    if plot_panels(report):
        lines += [f"![Throughput and upload latency of this run]({PLOT.relative_to(PAGE.parent).as_posix()})", ""]
    lines += throughput_section(report.get("throughput", []))
    lines += database_section(report.get("database", []))
    lines += latency_section(report.get("latency", []))
    return "\n".join(lines).rstrip("\n") + "\n"


def rewrite(page: str, section: str) -> str:
    if START not in page or END not in page:
        raise SystemExit(f"{PAGE} lacks the markers {START} and {END}")
    before, rest = page.split(START, 1)
    _, after = rest.split(END, 1)
    return f"{before}{START}\n{section}{END}{after}"


def stale_files(report: dict[str, Any] | None) -> list[Path]:
    """The generated files that differ from what ``report`` (the kept copy) gives."""
    stale = []
    page = PAGE.read_text()
    if rewrite(page, results_markdown(report, KEPT.relative_to(ROOT).as_posix())) != page:
        stale.append(PAGE)
    plot = plot_svg(report)
    if (PLOT.read_text() if PLOT.exists() else None) != plot:
        stale.append(PLOT)
    return stale


def write_files(report: dict[str, Any] | None) -> None:
    PAGE.write_text(rewrite(PAGE.read_text(), results_markdown(report, KEPT.relative_to(ROOT).as_posix())))
    plot = plot_svg(report)
    if plot is None:
        PLOT.unlink(missing_ok=True)
    else:
        PLOT.parent.mkdir(parents=True, exist_ok=True)
        PLOT.write_text(plot)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "json", nargs="?", type=Path, help="a bench JSON file [default: bench/results/latest.json, else the kept copy]"
    )
    parser.add_argument("--check", action="store_true", help="only check that the page and plot match the kept copy")
    args = parser.parse_args(argv)

    if args.check:
        stale = stale_files(json.loads(KEPT.read_text()) if KEPT.exists() else None)
        for path in stale:
            print(f"{path.relative_to(ROOT)} is stale: run python docs/gen_benchmarks.py", file=sys.stderr)
        return 1 if stale else 0

    source = args.json or (FRESH if FRESH.exists() else KEPT)
    if source.exists():
        report = json.loads(source.read_text())
        if source.resolve() != KEPT.resolve():
            KEPT.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, KEPT)
    else:
        report = None
    write_files(report)
    written = [PAGE, PLOT] if plot_panels(report) else [PAGE]
    print(
        f"wrote {' and '.join(path.relative_to(ROOT).as_posix() for path in written)}"
        + (f" from {source}" if report is not None else " (no results yet)")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
