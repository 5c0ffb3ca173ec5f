"""``producer compare JOB_A JOB_B``: two jobs' predictions of the same images, side by side.

python -m producer compare 3 4           # accuracy of each, what changed, the confusion diff (4 - 3)
python -m producer compare 3 4 --json    # the same numbers as GET /api/compare?a=3&b=4
python -m producer compare --models production canary --split test   # one job per model, then compared
"""

from __future__ import annotations

import json
import time

import click

from producer.errors import user_errors
from shared import jobs, models, queues
from shared.config import Settings
from shared.db import connection
from shared.digits import MAX_ROW_ID, NUM_CLASSES
from shared.jobs.comparison import Comparison, load_comparison

ROW_ID = click.IntRange(1, MAX_ROW_ID)
CHANGES_SHOWN = 20  # pairs of predictions listed; --json has them all
CELL = 6
USAGE = (
    "give two job ids (compare 3 4), or --models A B with a selection (compare --models production canary --split test)"
)


@click.command()
@click.argument("job_a", type=ROW_ID, required=False)
@click.argument("job_b", type=ROW_ID, required=False)
@click.option(
    "--models", nargs=2, metavar="A B", help="Submit the selection once per model version or alias, wait, then compare."
)
@click.option(
    "--split", type=click.Choice(["test", "train", "upload"]), help="With --models: only images of this split."
)
@click.option("--label", type=click.IntRange(0, 9), help="With --models: only images whose true label is this digit.")
@click.option("--limit", type=ROW_ID, help="With --models: at most N images (oldest first).")
@click.option(
    "--id", "image_ids", type=ROW_ID, multiple=True, help="With --models: exactly these image IDs (repeatable)."
)
@click.option(
    "--timeout",
    type=float,
    default=3600,
    show_default=True,
    help="With --models: give up waiting after this many seconds.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON (as GET /api/compare does).")
@click.pass_obj
@user_errors
def compare(
    config: Settings,
    job_a: int | None,
    job_b: int | None,
    models: tuple[str, str] | None,
    split: str | None,
    label: int | None,
    limit: int | None,
    image_ids: tuple[int, ...],
    timeout: float,
    as_json: bool,
) -> None:
    """Compare two jobs on the images both predicted: accuracy of each, what changed, the confusion diff (B - A).

    With --models A B, first run the same selection as two jobs, one on each model, and wait for both.
    """
    given_jobs = [job_id for job_id in (job_a, job_b) if job_id is not None]
    if (models and given_jobs) or (not models and len(given_jobs) != 2):
        raise click.UsageError(USAGE)
    if not models and (split is not None or label is not None or limit is not None or image_ids):
        raise click.UsageError("--split, --label, --limit and --id choose the images of --models; two jobs have theirs")
    conn = connection.connect(config.database_url)
    try:
        if models:
            job_a, job_b = run_on_both(
                conn, config, models, jobs.service.Selection(split, label, limit, False, image_ids), timeout
            )
        if job_a is None or job_b is None:  # ruled out above: without --models both ids are given
            raise click.UsageError(USAGE)
        result = load_comparison(conn, job_a, job_b)
    except jobs.comparison_store.UnknownJob as error:
        raise click.ClickException(str(error)) from None
    finally:
        conn.close()
    if as_json:
        click.echo(json.dumps(result.as_json(), indent=2))
    else:
        for line in report_lines(result):
            click.echo(line)


def run_on_both(
    conn: connection.Connection,
    config: Settings,
    names: tuple[str, str],
    selection: jobs.service.Selection,
    timeout: float,
) -> tuple[int, int]:
    """One job of ``selection`` per model (each name resolved now, as ``submit --model`` does), both waited for."""
    versions = [
        models.registry.resolve(conn, name) for name in names
    ]  # an unknown name is refused before anything is submitted
    app = queues.broker.celery_app(config)
    try:
        submitted = [jobs.service.submit_job(conn, app, config, selection, version) for version in versions]
    except jobs.service.NoImagesSelected as error:
        raise click.ClickException(f"{error} (ingest some first: python -m producer ingest mnist)") from None
    except jobs.service.UnknownImages as error:  # refused by the first submit: neither job was created
        raise click.BadParameter(str(error), param_hint="'--id'") from None
    for job in submitted:
        click.echo(f"job {job.id}: {job.images} images in {job.batches} batches, model {job.model_version}", err=True)
    deadline = time.monotonic() + timeout
    for job in submitted:
        finished = jobs.progress.wait_for_job(conn, job.id, max(0.0, deadline - time.monotonic()))
        if finished is None:  # deleted while it ran
            raise click.ClickException(f"job {job.id} no longer exists")
        if finished["status"] != "done":
            ids = " ".join(str(each.id) for each in submitted)
            raise click.ClickException(
                f"job {job.id} did not finish within {timeout:g} s; compare later: python -m producer compare {ids}"
            )
    return submitted[0].id, submitted[1].id


def report_lines(result: Comparison) -> list[str]:
    a, b = result.job_a, result.job_b
    name_a, name_b = f"job {a['id']}", f"job {b['id']}"
    lines = [f"A = {describe(a, result.versions_a)}", f"B = {describe(b, result.versions_b)}"]
    note = result.note()
    if note:
        return [*lines, note]
    lines.append(
        f"shared images: {result.shared}, {result.labelled} of them labelled"
        f" (predicted only by {name_a}: {result.only_in(a)}, only by {name_b}: {result.only_in(b)})"
    )
    accuracy_a, accuracy_b = result.accuracy_a, result.accuracy_b  # None when no shared image is labelled
    if accuracy_a is not None and accuracy_b is not None:
        gain = accuracy_b - accuracy_a
        accuracies = f"{name_a} {accuracy_a:.4f}, {name_b} {accuracy_b:.4f} ({gain:+.4f})"
        lines.append(f"accuracy on the labelled shared images: {accuracies}")
    else:
        lines.append("no shared image has a true label: accuracy unknown")
    totals = result.totals()
    lines.append(
        f"different predictions: {result.differing} of {result.shared} ({result.differing / result.shared:.2%}):"
        f" {totals['fixed']} fixed by B, {totals['broken']} broken by B,"
        f" {totals['changed'] - totals['fixed'] - totals['broken']} wrong in both but differently,"
        f" {totals['unlabelled_changed']} on images without a label"
    )
    if result.differing:
        lines += per_digit_lines(result) + change_lines(result) + diff_lines(result)
    return lines


def describe(job: dict, versions: tuple[str, ...]) -> str:
    """The job, its model, and the versions that really predicted the shared images when they are not just that one."""
    model = job["model_version"] or "production"
    predicted_by = (
        f" (shared images predicted by {', '.join(versions)})"
        if versions and list(versions) != [job["model_version"]]
        else ""
    )
    return (
        f"job {job['id']}: model {model}{predicted_by}, {job['status']},"
        f" {job['done_count']} of {job['total_images']} predicted"
    )


def per_digit_lines(result: Comparison) -> list[str]:
    columns = ("images", "A right", "B right", "fixed", "broken", "changed")
    lines = ["per true digit:", f"{'digit':>{CELL}}" + "".join(f"{name:>9}" for name in columns)]
    for row in result.per_true_label():
        if row["images"]:
            values = (row["images"], row["a_correct"], row["b_correct"], row["fixed"], row["broken"], row["changed"])
            lines.append(f"{row['digit']:>{CELL}}" + "".join(f"{value:>9}" for value in values))
    return lines


def change_lines(result: Comparison) -> list[str]:
    changes = result.changes()
    shown = ", ".join(f"{a}->{b}: {images}" for a, b, images in changes[:CHANGES_SHOWN])
    more = f" (and {len(changes) - CHANGES_SHOWN} more pairs)" if len(changes) > CHANGES_SHOWN else ""
    return [f"what A predicted -> what B predicts instead, images: {shown}{more}"]


def diff_lines(result: Comparison) -> list[str]:
    lines = [
        "confusion diff B - A (rows: true digit, columns: predicted; + where B predicts it more often, . for no change)"
    ]
    lines.append(" " * CELL + "".join(f"{k:>{CELL}}" for k in range(NUM_CLASSES)))
    for true_label, row in enumerate(result.confusion_diff):
        lines.append(f"{true_label:>{CELL}}" + "".join(f"{(f'{value:+d}' if value else '.'):>{CELL}}" for value in row))
    return lines
