"""Many pictures at once: operators upload several files or one .zip (a page and ``POST /api/batches``).

They become one job; the page sends the operator to the job's page, which follows its progress and
offers the results. The request's size is capped by BATCH_MAX_BYTES before it is read (the app's
MAX_CONTENT_LENGTH is for single uploads); the archive is judged by ``shared.images.batch`` before
anything is unpacked or stored. The files are held in memory, or in werkzeug's unnamed temporary
files for large ones, which vanish with the request: a refused batch leaves nothing behind.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, flash, jsonify, redirect, render_template, request, url_for
from werkzeug.exceptions import UnprocessableEntity
from werkzeug.wrappers import Response as BaseResponse

from shared import images, jobs
from shared.images.batch import BatchRefused, read_batch
from shared.images.preprocess import PREPROCESS_VERSION
from web import backends, predictions
from web.auth import operator_required

blueprint = Blueprint("batches", __name__)
api_blueprint = Blueprint("batches_api", __name__)


def submit_batch() -> dict[str, Any]:
    """Read, check, store and submit the request's files; UnprocessableEntity naming what was wrong."""
    config = backends.app_settings()
    request.max_content_length = config.batch_max_bytes
    sent = [
        (upload.filename or "unnamed", upload.read(config.batch_max_bytes + 1))
        for upload in request.files.getlist("files")
    ]
    try:
        batch = read_batch([(name, data) for name, data in sent if name or data], config)
    except BatchRefused as error:
        raise UnprocessableEntity(str(error)) from None
    conn = backends.get_db()
    version, _ = predictions.job_models(conn)
    image_ids = images.store.copy_images(conn, batch.rows, PREPROCESS_VERSION)
    job = jobs.service.submit_job(
        conn, backends.get_celery(), config, jobs.service.Selection(image_ids=tuple(image_ids)), version
    )
    return {
        "id": job.id,
        "images": job.images,
        "skipped": batch.skipped,
        "model_version": job.model_version,
        "status_url": url_for("api.show_job", job_id=job.id),
        "results_url": url_for("exports.job_results", job_id=job.id),
        "page_url": url_for("views.job", job_id=job.id),
    }


@blueprint.get("/batches/new")
@operator_required
def new_batch() -> str:
    config = backends.app_settings()
    return render_template("batch.html", config=config, error=None, refresh=None)


@blueprint.post("/batches")
@operator_required
def create_batch_page() -> BaseResponse | tuple[str, int]:
    try:
        created = submit_batch()
    except UnprocessableEntity as error:
        return render_template("batch.html", config=backends.app_settings(), error=error.description, refresh=None), 422
    for line in created["skipped"]:
        flash(f"skipped {line}", "warning")
    return redirect(created["page_url"])


@api_blueprint.post("/api/batches")
@operator_required
def create_batch() -> tuple[Response, int]:
    created = submit_batch()
    response = jsonify(created)
    response.headers["Location"] = created["status_url"]
    return response, 202
