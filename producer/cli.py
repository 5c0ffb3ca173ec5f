"""The producer's command line: one command per verb.

python -m producer init-db
python -m producer ingest mnist --split test
python -m producer submit --split test --limit 1000
python -m producer submit --split train --priority low --notify https://hooks.example/mnist
python -m producer cancel 1
python -m producer status 1 --wait
python -m producer report 1
python -m producer users add alice        # operators and their API tokens: producer/operators.py
python -m producer tokens create alice
python -m producer compare 3 4            # two jobs on the same images: producer/compare.py
python -m producer models list            # the model registry and its aliases: producer/models.py
"""

from __future__ import annotations

import getpass
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import psycopg
import psycopg.errors

from producer import compare as comparing
from producer import ingest as ingest_rows
from producer import models as model_commands
from producer import operators
from producer.errors import user_errors
from shared import images, jobs, models, queues
from shared.config import Settings, load_settings
from shared.db import connection, schema
from shared.digits import MAX_BATCH_SIZE, MAX_ROW_ID
from shared.jobs.reports import LOW_CONFIDENCE_THRESHOLD, build_job_report
from shared.training import registration

INSERT_CHUNK = 2000
# The progress bar redraws at least this often, and at once on every stored batch's notice.
PROGRESS_SECONDS = 0.5
# Ids and counts end up in BIGINT columns and LIMITs: refuse at parsing what PostgreSQL would refuse.
ROW_ID = click.IntRange(1, MAX_ROW_ID)
COUNT = click.IntRange(0, MAX_ROW_ID)


def open_database(config: Settings) -> connection.Connection:
    return connection.connect(config.database_url)


PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def project_version(pyproject: Path | None = None) -> str:
    """The version pyproject.toml declares, read when asked (not at import), so it is never stale."""
    with open(pyproject or PYPROJECT, "rb") as file:
        return str(tomllib.load(file)["project"]["version"])


class VersionAtCallTime(str):
    """The version for click.version_option, read from pyproject.toml only when --version is asked:
    click formats its message with %s, which calls __str__."""

    def __str__(self) -> str:
        return project_version()


@click.group()
@click.version_option(VersionAtCallTime(), prog_name="mnist-queue")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Load images into PostgreSQL, submit them as jobs, and report the predictions."""
    if ctx.obj is None:  # a caller (a test, a tool) may pass its own Settings as obj
        try:
            ctx.obj = load_settings()
        except ValueError as error:
            raise click.ClickException(str(error)) from None


@main.command("init-db")
@click.pass_obj
@user_errors
def init_db(config: Settings) -> None:
    """Create the schema or apply pending migrations (safe to run again), as SCHEMA_DATABASE_URL's role if set;
    then register the bundled model (MODEL_PATH) and alias it production if no model is."""
    connection.wait_for_database(config.schema_database_url, timeout_seconds=30).close()
    try:
        before, after = schema.migrate(config.schema_database_url)
    except psycopg.errors.InsufficientPrivilege as error:
        # The services' role (mnist_app) may not create tables, by design: say which role may.
        reason = str(error).strip().splitlines()[0]
        raise click.ClickException(
            f"{reason}: init-db needs the role that owns the tables; set SCHEMA_DATABASE_URL to its URL (mnist_owner)"
        ) from None
    click.echo(f"schema ready at migration {after}" + (f" (was {before or 'empty'})" if before != after else ""))
    conn = connection.connect(config.schema_database_url)
    try:
        outcome = registration.register_bundled(conn, config.model_path, config.mnist_dir)
    finally:
        conn.close()
    click.echo(model_commands.registration_line(outcome, config.model_path))


@main.group()
def ingest() -> None:
    """Store images in the database."""


@ingest.command("mnist")
@click.option("--split", type=click.Choice(["test", "train"]), default="test", show_default=True)
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    help="Folder of MNIST IDX .gz files or mnist.npz [default: the bundled test set]",
)
@click.option("--limit", type=ROW_ID, help="Store only the first N images.")
@click.pass_obj
@user_errors
def ingest_mnist(config: Settings, split: str, data: Path | None, limit: int | None) -> None:
    """Store an MNIST split; images already stored are skipped."""
    digits, labels = ingest_rows.load_mnist(data or config.mnist_dir, split, limit)
    conn = open_database(config)
    inserted = 0
    with click.progressbar(length=len(digits), label=f"ingesting MNIST {split}") as bar:
        for start in range(0, len(digits), INSERT_CHUNK):
            chunk = slice(start, start + INSERT_CHUNK)
            rows = list(ingest_rows.mnist_rows(digits[chunk], labels[chunk], split, start))
            inserted += len(images.store.insert_images(conn, rows))
            bar.update(len(rows))
    click.echo(f"stored {inserted} new images, {len(digits) - inserted} were already there")


@ingest.command("folder")
@click.argument("folder", type=click.Path(path_type=Path))
@click.pass_obj
@user_errors
def ingest_folder(config: Settings, folder: Path) -> None:
    """Store your own digit pictures (PNG, JPEG, GIF, BMP, WebP) in MNIST form.

    Pictures under a folder named 0-9 get that digit as their true label.
    """
    outcome = ingest_folder_with_progress(config, folder)
    click.echo(
        f"stored {outcome.inserted} new images, {outcome.already} were already there, {len(outcome.rejected)} rejected"
    )


def ingest_folder_with_progress(
    config: Settings, folder: Path, on_stored: Callable[[list[int], int], None] | None = None
) -> ingest_rows.FolderIngest:
    """``ingest folder``'s work, with a line per file not stored (on stderr) and a running count."""
    conn, read_conn = open_database(config), open_database(config)
    label = f"ingesting {ingest_rows.printable(folder)}"
    live = sys.stderr.isatty()

    def stored(ids: list[int], seen: int) -> None:
        if live:  # the folder's size is unknown until walked: a running count, not a bar
            click.echo(f"\r{label}: {seen} files", nl=False, err=True)
        if on_stored is not None:
            on_stored(ids, seen)

    try:
        outcome = ingest_rows.ingest_folder(conn, read_conn, folder, config, stored)
        if live:
            click.echo("", err=True)
    finally:
        read_conn.close()
        conn.close()
    for line in outcome.rejected:
        click.echo(f"skipped {line}", err=True)
    return outcome


@main.command()
@click.option("--split", type=click.Choice(["test", "train", "upload"]), help="Only images of this split.")
@click.option("--label", type=click.IntRange(0, 9), help="Only images whose true label is this digit.")
@click.option("--limit", type=ROW_ID, help="At most N images (oldest first).")
@click.option("--unpredicted", is_flag=True, help="Only images the job's model has not predicted yet.")
@click.option("--id", "image_ids", type=ROW_ID, multiple=True, help="Exactly these image IDs (repeatable).")
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH_SIZE), help="Images per task [default: BATCH_SIZE].")
@click.option(
    "--model", default=models.registry.PRODUCTION, show_default=True, help="The version or alias that predicts the job."
)
@click.option("--shadow", help="A second version or alias that predicts the job too; its results are stored apart.")
@click.option(
    "--priority",
    type=click.Choice(jobs.fair_share.PRIORITIES),
    default="normal",
    show_default=True,
    help="Batches of a higher priority are taken before waiting ones of a lower.",
)
@click.option(
    "--notify", "notify_url", help="POST a signed JSON summary to this URL when the job ends (WEBHOOK_ALLOWED_HOSTS)."
)
@click.pass_obj
@user_errors
def submit(
    config: Settings,
    split: str | None,
    label: int | None,
    limit: int | None,
    unpredicted: bool,
    image_ids: tuple[int, ...],
    batch_size: int | None,
    model: str,
    shadow: str | None,
    priority: str,
    notify_url: str | None,
) -> None:
    """Create a job from stored images and enqueue it in batches; prints the job id.

    A job has a few batches queued at a time, so a small job never waits behind a big one (fair share)."""
    selection = jobs.service.Selection(split, label, limit, unpredicted, image_ids)
    if notify_url is not None:
        jobs.webhooks.check_url(notify_url, config)  # refused before anything is read or recorded
    conn = open_database(config)
    version, shadow_version = models.registry.resolve_job_models(conn, model, shadow)  # an alias means its version now
    try:
        app = queues.broker.celery_app(config)
        options = (batch_size, shadow_version, priority, notify_url)
        job = jobs.service.submit_job(conn, app, config, selection, version, *options)
    except jobs.service.NoImagesSelected as error:
        raise click.ClickException(f"{error} (ingest some first: python -m producer ingest mnist)") from None
    except jobs.service.UnknownImages as error:  # typed by the user: refused as a bad option, exit status 2
        raise click.BadParameter(str(error), param_hint="'--id'") from None
    shadowed = f", shadow {job.shadow_version}" if job.shadow_version else ""
    click.echo(
        f"job {job.id}: {job.images} images in {job.batches} batches, model {job.model_version}{shadowed}", err=True
    )
    click.echo(job.id)


@main.command()
@click.argument("job_id", type=ROW_ID)
@click.pass_obj
@user_errors
def resume(config: Settings, job_id: int) -> None:
    """Enqueue a job's unfinished images again (after Redis lost its queue, say).

    Always safe: images that already have a prediction are not predicted twice.
    A cancelled job is not resumed (exit status 1): a cancel is final; submit its images again instead.
    """
    count = jobs.service.resume_job(open_database(config), queues.broker.celery_app(config), config, job_id)
    click.echo(f"job {job_id}: re-enqueued {count} unfinished images" if count else f"job {job_id}: nothing left to do")


@main.command()
@click.argument("job_id", type=ROW_ID)
@click.option("--by", help="Who cancels, as recorded [default: cli:$USER].")
@click.pass_obj
@user_errors
def cancel(config: Settings, job_id: int, by: str | None) -> None:
    """Cancel a queued or running bulk job: its status is cancelled at once, and workers skip its remaining batches.

    What was stored stays, counted. Cancelling a cancelled job again changes nothing (exit status 0); a job
    that has ended (done or failed), an upload, or no job at all: a message, exit status 1, nothing changed.
    """
    who = by or f"cli:{getpass.getuser()}"
    changed, job = jobs.service.cancel_job(open_database(config), queues.broker.celery_app(config), config, job_id, who)
    when = f"{job['cancelled_at']:%Y-%m-%d %H:%M:%S %Z}".strip()
    finished = f"{job['done_count']} predicted, {job['failed_count']} failed of {job['total_images']}"
    state = "cancelled" if changed else "was already cancelled"
    click.echo(f"job {job_id}: {state} by {job['cancelled_by']} at {when}; {finished}")


@main.command()
@click.argument("job_id", type=ROW_ID)
@click.option("--wait", is_flag=True, help="Show a progress bar until the job is done.")
@click.option("--timeout", type=float, default=3600, show_default=True, help="Give up waiting after this many seconds.")
@click.pass_obj
@user_errors
def status(config: Settings, job_id: int, wait: bool, timeout: float) -> None:
    """Show a job's progress; with --wait, until it ends (done, failed or cancelled)."""
    conn = open_database(config)
    job = require_job(conn, job_id)
    if wait and job["status"] not in jobs.store.ENDED:
        job = wait_for_job(conn, job, timeout)
    when = f"{job['cancelled_at']:%Y-%m-%d %H:%M:%S}" if job["cancelled_at"] else ""
    cancelled = f", cancelled by {job['cancelled_by']} at {when}" if job["cancelled_at"] else ""
    click.echo(
        f"job {job_id}: {job['status']}, {job['done_count']} predicted, {job['failed_count']} failed"
        f" of {job['total_images']} (model {job['model_version'] or 'production'}, priority {job['priority']})"
        + cancelled
    )
    if wait and job["status"] not in jobs.store.ENDED:
        raise click.ClickException(f"job {job_id} did not finish within {timeout:g} s")


def wait_for_job(conn: connection.Connection, job: dict[str, Any], timeout: float) -> dict[str, Any]:
    """A progress bar until the job is done, redrawn on the workers' notices."""
    deadline = time.monotonic() + timeout
    finished = job["done_count"] + job["failed_count"]
    with jobs.progress.listening(conn), click.progressbar(length=job["total_images"], label=f"job {job['id']}") as bar:
        bar.update(finished)
        while job["status"] not in jobs.store.ENDED and time.monotonic() < deadline:
            jobs.progress.wait_for_progress(conn, min(PROGRESS_SECONDS, max(0.0, deadline - time.monotonic())))
            job = require_job(conn, job["id"])
            now_finished = job["done_count"] + job["failed_count"]
            bar.update(now_finished - finished)
            finished = now_finished
    return job


def require_job(conn: connection.Connection, job_id: int) -> dict[str, Any]:
    job = jobs.store.get_job(conn, job_id)
    if job is None:
        raise click.ClickException(f"there is no job {job_id}")
    return job


@main.command()
@click.argument("job_id", type=ROW_ID)
@click.option(
    "--wrong", "wrong_limit", type=COUNT, default=10, show_default=True, help="How many wrong predictions to list."
)
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1),
    help=(
        "Count predictions under this confidence"
        f" [default: the production model card's, else {LOW_CONFIDENCE_THRESHOLD}]."
    ),
)
@click.pass_obj
@user_errors
def report(config: Settings, job_id: int, wrong_limit: int, threshold: float | None) -> None:
    """Accuracy, per-class accuracy, confusion matrix and mistakes of a job."""
    result = build_job_report(open_database(config), job_id, wrong_limit, threshold)
    if result is None:
        raise click.ClickException(f"there is no job {job_id}")
    job = result.job
    click.echo(
        f"job {job_id}: {job['status']}, {job['done_count']} predicted,"
        f" {job['failed_count']} failed of {job['total_images']}"
    )
    if result.accuracy is None:
        click.echo("no labelled predictions yet: accuracy unknown")
    else:
        click.echo(f"accuracy: {result.accuracy:.4f} on {result.labelled} labelled images")
        click.echo(
            "per class: "
            + "  ".join(
                f"{k}:{acc:.3f}" if acc is not None else f"{k}:-" for k, acc in enumerate(result.per_class_accuracy())
            )
        )
        click.echo("confusion matrix (rows: true, columns: predicted)")
        click.echo("      " + "".join(f"{k:>6}" for k in range(10)))
        for k, row in enumerate(result.confusion):
            click.echo(f"{k:>6}" + "".join(f"{v:>6}" for v in row))
    click.echo(f"confidence < {result.low_confidence_threshold:g}: {result.low_confidence} predictions")
    for wrong in result.wrong:
        image_id, true_label, predicted_label = wrong["input_data_id"], wrong["true_label"], wrong["predicted_label"]
        click.echo(f"wrong: image {image_id} is {true_label}, predicted {predicted_label} ({wrong['confidence']:.3f})")
    for image_id, reason in result.failures:
        click.echo(f"failed: image {image_id}: {reason}")


@main.command()
@click.argument("job_id", type=ROW_ID)
@click.option("--format", "form", type=click.Choice(jobs.export.FORMATS), default="csv", show_default=True)
@click.option(
    "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here [default: standard output]."
)
@click.option("--probabilities", is_flag=True, help="Add the ten class probabilities p0-p9.")
@click.pass_obj
@user_errors
def results(config: Settings, job_id: int, form: str, output: Path | None, probabilities: bool) -> None:
    """A job's predictions, one row per image, streamed: a job still running exports what is stored so far."""
    conn = open_database(config)
    info = jobs.export.describe(conn, [job_id])
    if info is None:
        raise click.ClickException(f"there is no job {job_id}")
    write_results(conn, info, form, output, probabilities)


def write_results(
    conn: connection.Connection, info: jobs.export.ExportInfo, form: str, output: Path | None, probabilities: bool
) -> None:
    """The export of ``info``'s jobs to ``output`` (or stdout); a partial one is said so on stderr."""
    if form == "parquet" and output is None:
        raise click.ClickException("--format parquet needs --output FILE")
    if output is None:
        sys.stdout.flush()
        count = jobs.export.write(conn, info.job_ids, form, sys.stdout.buffer, probabilities)
        sys.stdout.buffer.flush()
    else:
        partial = output.with_name(output.name + ".partial")  # a stopped export never looks finished
        with open(partial, "wb") as file:
            count = jobs.export.write(conn, info.job_ids, form, file, probabilities)
        partial.replace(output)
    click.echo(f"{count} results; {info.note()}", err=True)


# Images per job while `run` ingests: a job starts being predicted as soon as its slice is stored.
RUN_SLICE = 4096


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Where the results go.")
@click.option("--format", "form", type=click.Choice(jobs.export.FORMATS), default="csv", show_default=True)
@click.option(
    "--model", default=models.registry.PRODUCTION, show_default=True, help="The version or alias that predicts."
)
@click.option(
    "--timeout", type=float, default=24 * 3600, show_default=True, help="Give up waiting after this many seconds."
)
@click.pass_obj
@user_errors
def run(config: Settings, folder: Path, output: Path, form: str, model: str, timeout: float) -> None:
    """Ingest a folder, predict it, write the results: one command, resumable.

    Slices are submitted while the folder is still being ingested. Each job records the folder, so
    running the same command again (after Ctrl-C, say) resumes: stored pictures are not read again,
    unfinished jobs are re-enqueued, and images stored but never submitted are submitted.
    """
    if not folder.is_dir():
        raise click.ClickException(f"{ingest_rows.printable(folder)} is not a folder")
    root = str(folder.resolve())
    conn = open_database(config)
    app = queues.broker.celery_app(config)
    version, _ = models.registry.resolve_job_models(conn, model, None)
    earlier = jobs.folder_store.folder_job_ids(conn, root)
    for job_id in earlier:  # a stopped run's jobs: only what has no result yet is sent again
        jobs.service.resume_job(conn, app, config, job_id)
    pending: list[int] = []

    def submit(image_ids: list[int]) -> None:
        job_id = jobs.store.create_job(conn, image_ids, version, {"folder": root, "images": len(image_ids)})
        jobs.service.enqueue_bulk(app, config, job_id, image_ids)

    def stored(ids: list[int], _seen: int) -> None:
        pending.extend(ids)
        if len(pending) >= RUN_SLICE:
            submit(pending[:])
            pending.clear()

    try:
        outcome = ingest_folder_with_progress(config, folder, stored)
    except ValueError as error:
        if not earlier:
            raise
        click.echo(f"{error}; the earlier run's results remain", err=True)
    else:
        click.echo(
            f"stored {outcome.inserted} new images, {outcome.already} were already there,"
            f" {len(outcome.rejected)} rejected",
            err=True,
        )
    leftover = jobs.folder_store.folder_images_without_job(conn, root)
    for start in range(0, len(leftover), config.max_job_images):
        submit(leftover[start : start + config.max_job_images])
    job_ids = jobs.folder_store.folder_job_ids(conn, root)
    if not job_ids:
        raise click.ClickException(f"{ingest_rows.printable(folder)}: no picture could be stored")
    wait_for_jobs(conn, job_ids, timeout)
    info = jobs.export.describe(conn, job_ids)
    if info is None:
        raise click.ClickException("a job of this folder was deleted meanwhile; run again")
    write_results(conn, info, form, output, probabilities=False)


def wait_for_jobs(conn: connection.Connection, job_ids: list[int], timeout: float) -> None:
    """One progress bar over all of ``job_ids``, redrawn on the workers' notices."""
    deadline = time.monotonic() + timeout

    def counts() -> tuple[int, int]:
        found = [require_job(conn, job_id) for job_id in job_ids]
        return sum(job["done_count"] + job["failed_count"] for job in found), sum(job["total_images"] for job in found)

    finished, total = counts()
    with jobs.progress.listening(conn), click.progressbar(length=total, label="predicting") as bar:
        bar.update(finished)
        while finished < total and time.monotonic() < deadline:
            jobs.progress.wait_for_progress(conn, min(PROGRESS_SECONDS, max(0.0, deadline - time.monotonic())))
            now_finished, total = counts()
            bar.update(now_finished - finished)
            finished = now_finished
    if finished < total:
        click.echo(f"gave up waiting after {timeout:g} s: writing the results stored so far", err=True)


main.add_command(model_commands.models)
main.add_command(operators.users)
main.add_command(operators.tokens)
main.add_command(comparing.compare)
