"""The benchmark suite: every figure in one run on one machine, so the ratios hold.

    python -m bench [--repeats 3] [--sections database,throughput,seed,latency] [--database-core]
    python -m bench --sections scale [--scale-sizes 10000,100000,1000000] [--label after]
    python -m bench --sections ingest [--ingest-sizes 10000,100000] [--ingest-kind digits|photos] [--run-size 100000]
        [--export-sizes ...] [--against /tmp/before]   (--repeats pairs of producer run against ingest alone)
    python -m bench --sections scale-ab --scale-sizes 1000000 --against /tmp/arch-before
    python -m bench --sections burst [--rates 100,300,1000,2000] [--web serve] [--against /tmp/arch-before]
        [--label after] [--connections keep-alive|close]
    python -m bench --sections models [--baseline-model OLD.tflite]   (float vs int8, shipped vs a baseline)
    python -m bench --sections robustness [--baseline-model OLD.tflite]   (accuracy on pictures from real sources)
    python -m bench --sections network [--network-images 30000] --workers 1,2,4   (needs root: 0, 2, 20 ms RTT)
    python -m bench --sections upload-memory [--against /tmp/before]   (web RSS under worst-case uploads)
    python -m bench --sections lifecycle [--lifecycle-images 10000] --workers 2 [--against /tmp/before]
        (fair share: a small job behind a big one, before and after; seconds from cancel to idle workers)

Prints a table and writes bench/results/latest.json (latest-database-core.json with
``--database-core``, which gives PostgreSQL a core of its own). Throughput figures are the median of
``--repeats`` runs with the spread (max - min); latency figures are percentiles over
500 sequential uploads. Uses a private database and queue names.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import click

from bench import common, database, folders, latency, throughput
from producer.ingest import load_mnist, mnist_rows
from shared import images
from shared.db import connection

SEED_SLICE = 300


def table(rows: list[dict[str, Any]], ceiling: float) -> list[str]:
    lines = [f"{'what':<66}{'images/s':>10}{'spread':>10}{'x bare':>9}  CPU µs per image"]
    for row in rows:
        rate = row["images_per_second"]
        cpu = ", ".join(f"{name} {us:g}" for name, us in row.get("cpu_us_per_image", {}).items())
        lines.append(f"{row['what']:<66}{rate:>10,.0f}{row['spread']:>10,.0f}{rate / ceiling:>9.3f}  {cpu}")
    return lines


@click.command()
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--sections", default="database,throughput,seed,latency", show_default=True, help="Which parts to run.")
@click.option("--workers", default="1,2", show_default=True, help="Worker process counts for the pipeline figure.")
@click.option(
    "--database-core", is_flag=True, help="PostgreSQL on a core of its own, the rest for the model and the queue."
)
@click.option(
    "--scale-sizes",
    default="10000,100000,1000000",
    show_default=True,
    help="Stored images at each step of --sections scale.",
)
@click.option("--rates", default="100,300,1000,2000", show_default=True, help="Uploads per second of --sections burst.")
@click.option("--label", default="", help="Names the result files of scale and burst (e.g. before, after).")
@click.option(
    "--web",
    default="serve",
    show_default=True,
    help="burst: serve[:THREADS] (web/serve.py); gunicorn sync or gthread:THREADS.",
)
@click.option(
    "--against",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="burst, upload-memory, ingest, lifecycle: also run this worktree's code, first.",
)
@click.option("--against-web", default="sync", show_default=True, help="the web for --against, as --web.")
@click.option(
    "--connections",
    type=click.Choice(["keep-alive", "close"]),
    default="keep-alive",
    show_default=True,
    help="burst: the client reuses idle connections (HTTP/1.1 keep-alive) or opens one per upload.",
)
@click.option("--ingest-sizes", default="10000,100000", show_default=True, help="ingest: pictures in each folder.")
@click.option(
    "--ingest-kind",
    type=click.Choice(folders.KINDS),
    default="digits",
    show_default=True,
    help="ingest: 28x28 PNGs, or 640x480 JPEG photos of a digit on paper (bench/folders.py).",
)
@click.option(
    "--run-size",
    default=100_000,
    show_default=True,
    type=click.IntRange(min=0),
    help="ingest: pictures of the folder that producer run takes to CSV, against ingest alone (0: not run).",
)
@click.option("--export-sizes", default="10000,100000,1000000", show_default=True, help="ingest: predictions exported.")
@click.option("--network-images", default=30_000, show_default=True, help="network: images of each job.")
@click.option("--lifecycle-images", default=10_000, show_default=True, help="lifecycle: images of the big job.")
@click.option(
    "--baseline-model",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="models: a .tflite file to compare with.",
)
def main(
    repeats: int,
    sections: str,
    workers: str,
    database_core: bool,
    scale_sizes: str,
    rates: str,
    label: str,
    web: str,
    against: Path | None,
    against_web: str,
    connections: str,
    baseline_model: Path | None,
    network_images: int,
    lifecycle_images: int,
    ingest_sizes: str,
    ingest_kind: str,
    run_size: int,
    export_sizes: str,
) -> None:
    """Bare model vs mnist-queue vs the seed design; upload latency; memory; scale; upload bursts."""
    chosen = set(sections.split(","))
    # The others print it with their own table.
    if chosen & {"scale", "scale-ab", "burst", "robustness", "network", "upload-memory", "lifecycle", "ingest"}:
        click.echo(machine_line())
    if "scale" in chosen:
        from bench import scale

        click.echo("\n".join(scale.main(tuple(int(size) for size in scale_sizes.split(",")), label)))
    if "ingest" in chosen:
        from bench import ingest

        sizes = tuple(int(size) for size in ingest_sizes.split(",") if size)
        export = tuple(int(size) for size in export_sizes.split(",") if size)
        click.echo("\n".join(ingest.main(sizes, ingest_kind, run_size, repeats, export, against)))
    if "scale-ab" in chosen:
        from bench import scale

        if against is None:
            raise click.UsageError("--sections scale-ab needs --against WORKTREE")
        click.echo("\n".join(scale.compare_throughput(int(scale_sizes.split(",")[-1]), against)))
    if "burst" in chosen:
        from bench import burst

        click.echo(
            "\n".join(
                burst.main(tuple(int(rate) for rate in rates.split(",")), label, web, against, against_web, connections)
            )
        )
    if "models" in chosen:
        click.echo("\n".join(model_costs(repeats, baseline_model)))
    if "robustness" in chosen:
        from bench import robustness

        click.echo("\n".join(robustness.section(baseline_model)))
    if "network" in chosen:
        from bench import network

        click.echo("\n".join(network.table(network.run(network_images, tuple(int(n) for n in workers.split(","))))))
    if "upload-memory" in chosen:
        from bench import upload_memory

        click.echo("\n".join(upload_memory.main(against)))
    if "lifecycle" in chosen:
        click.echo("\n".join(lifecycle_section(lifecycle_images, int(workers.split(",")[-1]), against)))
    chosen -= {"scale", "scale-ab", "burst", "models", "robustness", "network", "upload-memory", "lifecycle", "ingest"}
    if not chosen:
        return
    placement = (
        common.database_on_its_own_core() if database_core else contextlib.nullcontext("every process on every core")
    )
    with placement as where, common.private_environment() as (env, settings):
        digit_images, labels = load_mnist(settings.mnist_dir, "test", None)
        conn = connection.connect(settings.database_url)
        image_ids = images.store.insert_images(conn, list(mnist_rows(digit_images, labels, "test")))
        conn.close()

        database_rows = database.run(settings, image_ids, repeats, labels) if "database" in chosen else []
        rows = [throughput.bare_model(settings, digit_images, repeats, runtime) for runtime in ("litert", "tensorflow")]
        if "throughput" in chosen:
            rows.append(throughput.in_process(settings, image_ids, repeats))
            rows += [
                throughput.pipeline(env, settings, image_ids, int(n), repeats, common.RESULTS_DIR)
                for n in workers.split(",")
            ]
        if "seed" in chosen:
            rows.append(throughput.seed_style(env, settings, image_ids[:SEED_SLICE], common.RESULTS_DIR))
        latency_rows = (
            latency.run(env, settings, image_ids, digit_images, common.RESULTS_DIR) if "latency" in chosen else []
        )

    ceiling = max(row["images_per_second"] for row in rows)
    machine = f"{machine_line()}; {where}"
    lines = [machine, f"10,000 MNIST test images; median of {repeats}", ""]
    lines += table(rows, ceiling)
    if database_rows:
        lines += ["", *database.table(database_rows)]
    if latency_rows:
        lines += ["", *latency.table(latency_rows)]
    click.echo("\n".join(lines))
    report = {
        "machine": {"cores": os.cpu_count(), "cpu": common.cpu_model(), "placement": where},
        "throughput": rows,
        "database": database_rows,
        "latency": latency_rows,
    }
    name = "latest-database-core" if database_core else "latest"
    (common.RESULTS_DIR / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (common.RESULTS_DIR / f"{name}.txt").write_text("\n".join(lines) + "\n")


def machine_line() -> str:
    """What every section prints first: figures of one run compare, runs on different machines do not."""
    return f"machine: {os.cpu_count()} cores, {common.cpu_model()}"


def lifecycle_section(large: int, workers: int, against: Path | None) -> list[str]:
    """The lifecycle section in a private environment of its own: the stored MNIST test images, and beyond
    their 10,000 the scale section's distorted copies, written by COPY."""
    from bench import lifecycle, scale

    with common.private_environment() as (env, settings):
        digit_images, labels = load_mnist(settings.mnist_dir, "test", None)
        conn = connection.connect(settings.database_url)
        conn.autocommit = True
        image_ids = images.store.insert_images(conn, list(mnist_rows(digit_images, labels, "test")))
        if large > len(image_ids):
            rate = scale.ImageFactory(scale.dataset_dir()).store(conn, large - len(image_ids))
            click.echo(f"lifecycle: stored {large - len(image_ids):,} more images at {rate:,.0f}/s", err=True)
            image_ids = [row[0] for row in connection.query(conn, "SELECT id FROM input_data ORDER BY id")]
            images.bulk_load.vacuum_analyze(conn)
        conn.close()
        return lifecycle.run(env, settings, image_ids, large, workers, common.RESULTS_DIR, against)


def model_costs(repeats: int, baseline: Path | None) -> list[str]:
    """The models section: needs no services, so it runs outside the private environment."""
    from bench import models
    from shared.config import load_settings
    from shared.training import mnist

    settings = load_settings()
    images, _ = mnist.load_split(settings.mnist_dir, "test")
    rows = models.run(settings.model_path, images, repeats, baseline)
    lines = [machine_line(), f"10,000 MNIST test images; median of {repeats}", ""]
    lines += models.table(rows)
    common.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (common.RESULTS_DIR / "models.json").write_text(json.dumps({"machine": lines[0], "rows": rows}, indent=2) + "\n")
    return lines


if __name__ == "__main__":
    main()
