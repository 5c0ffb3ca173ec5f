"""The JSON API and the health checks; web/openapi.yaml documents them (served at /api/openapi.json).

POST /api/predictions          anyone: an image (multipart field ``file`` or the raw body) -> 202, or 200 with ?wait;
                               ?model= pins a version or alias (default production), ?shadow= adds a shadow version
GET  /api/predictions/<token>  anyone holding the upload's token: queued / done / failed, label, confidence,
probabilities
POST /api/jobs                 operators: {"split", "label", "limit", "model", "shadow", "priority", "callback_url"}
                               -> 202 with the job id
GET  /api/jobs/<id>            operators: progress and accuracy, state, webhook attempts
POST /api/jobs/<id>/cancel     operators: cancel a queued or running bulk job (409 when it has ended)
GET  /api/compare?a=&b=        operators: two jobs on the images both predicted (web/comparisons.py)
GET  /healthz, /readyz         alive; database, broker and model ready (503 naming what is not)

Exempt from the forms' CSRF check: programs authenticate with a bearer token, which no other site
can make a browser send (web/auth.py asks a session-authenticated unsafe call for the CSRF token).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml
from flask import Blueprint, Response, jsonify, request, url_for
from werkzeug.exceptions import BadRequest, Conflict, NotFound, UnprocessableEntity, UnsupportedMediaType

from shared import jobs
from shared.digits import MAX_ROW_ID, NUM_CLASSES
from shared.jobs.reports import build_job_report
from web import auth, backends, comparisons, predictions
from web.auth import operator_name, operator_required
from web.params import float_arg

blueprint = Blueprint("api", __name__)
blueprint.before_request(auth.refuse_bad_bearer_token)

OPENAPI_DOCUMENT = Path(__file__).resolve().parent / "openapi.yaml"

MAX_WAIT_SECONDS = 30.0
RAW_IMAGE_TYPES = ("image/", "application/octet-stream")
JOB_SPLITS = ("train", "test", "upload")
JOB_FIELDS = frozenset({"split", "label", "limit", "model", "shadow", "priority", "callback_url"})
UPLOAD_HELP = (
    "send the image as a multipart/form-data field named 'file', or as the raw request body"
    " with Content-Type image/png (or another image/* type, or application/octet-stream)"
)


@blueprint.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@blueprint.get("/readyz")
def readyz() -> tuple[Response, int]:
    database = backends.check_database()
    failures = {
        name: problem
        for name, problem in (
            ("database", database),
            ("broker", backends.check_broker()),
            ("model", None if database else backends.check_model()),  # the registry is in the database
        )
        if problem
    }
    if failures:
        message = "; ".join(f"{name} unavailable: {problem}" for name, problem in failures.items())
        return jsonify(status="unavailable", error=message, failing=sorted(failures)), 503
    return jsonify(status="ready"), 200


@blueprint.get("/api/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document())


@functools.cache
def openapi_document() -> dict[str, Any]:
    return yaml.safe_load(OPENAPI_DOCUMENT.read_text())


@blueprint.post("/api/predictions")
def create_prediction() -> tuple[Response, int]:
    wait = wait_seconds()
    model, shadow = request.args.get("model") or None, request.args.get("shadow") or None
    data, filename = uploaded_image()
    config = backends.app_settings()
    # Read before the upload is enqueued, so that the worker's notice cannot be missed.
    since = backends.get_progress_listener().generation() if wait else None
    try:
        prediction = predictions.accept_upload(backends.get_db(), config, data, filename, model, shadow)
    except ValueError as error:
        raise BadRequest(str(error)) from None
    return prediction_response(waited(prediction, since, wait), wait, just_created=True)


@blueprint.get("/api/predictions/<token:token>")
def show_prediction(token: str) -> tuple[Response, int]:
    wait = wait_seconds()
    since = backends.get_progress_listener().generation() if wait else None  # before the look
    prediction = predictions.get_prediction_by_token(backends.get_db(), token)
    if prediction is None:
        raise NotFound("there is no prediction with that token")
    return prediction_response(waited(prediction, since, wait), wait, just_created=False)


def waited(prediction: predictions.Prediction, since: int | None, wait: float) -> predictions.Prediction:
    """The prediction after waiting up to ``wait`` seconds for it to finish; the request's connection goes
    back to the pool while it sleeps."""
    if not wait or prediction.finished:
        return prediction

    def look() -> predictions.Prediction | None:
        return predictions.get_prediction(backends.get_db(), prediction.id)

    listener = backends.get_progress_listener()
    return predictions.await_prediction(listener, prediction, since, wait, look, backends.close_db)


@blueprint.post("/api/jobs")
@operator_required
def create_job() -> tuple[Response, int]:
    body = json_object()
    split, label, limit = job_selection(body)
    conn, config = backends.get_db(), backends.app_settings()
    priority, callback_url = job_options(body)
    try:  # refused before anything is read or recorded
        jobs.fair_share.check_priority(priority)
        if callback_url is not None:
            jobs.webhooks.check_url(callback_url, config)
    except ValueError as error:
        raise BadRequest(str(error)) from None
    version, shadow_version = predictions.job_models(conn, *job_model_names(body))
    selection = jobs.service.Selection(split, label, limit)
    try:
        job = jobs.service.submit_job(
            conn, backends.get_celery(), config, selection, version, None, shadow_version, priority, callback_url
        )
    except (jobs.service.NoImagesSelected, jobs.service.TooManyImages) as error:
        raise UnprocessableEntity(str(error)) from None
    status_url = url_for("api.show_job", job_id=job.id)
    page_url = url_for("views.job", job_id=job.id)
    response = jsonify(
        id=job.id,
        status="queued",
        total_images=job.images,
        model_version=job.model_version,
        shadow_version=job.shadow_version,
        priority=priority,
        status_url=status_url,
        page_url=page_url,
    )
    response.headers["Location"] = status_url
    return response, 202


@blueprint.get("/api/jobs/<id:job_id>")
@operator_required
def show_job(job_id: int) -> Response:
    report = build_job_report(backends.get_db(), job_id)
    if report is None:
        raise NotFound(f"there is no job {job_id}")
    return jsonify(predictions.job_summary(report, jobs.lifecycle_store.deliveries(backends.get_db(), job_id)))


@blueprint.post("/api/jobs/<id:job_id>/cancel")
@operator_required
def cancel_job(job_id: int) -> Response:
    """Cancel a queued or running bulk job; again for a cancelled one changes nothing (200 all the same)."""
    cancel(job_id)
    return show_job(job_id)


def cancel(job_id: int) -> bool:
    """Cancel as the signed-in operator: whether this call cancelled it; 404 for no job, 409 for one that has ended."""
    conn, config = backends.get_db(), backends.app_settings()
    try:
        changed, _ = jobs.service.cancel_job(conn, backends.get_celery(), config, job_id, operator_name())
    except jobs.service.UnknownJob as error:
        raise NotFound(str(error)) from None
    except jobs.service.JobEnded as error:
        raise Conflict(str(error)) from None
    return changed


@blueprint.get("/api/compare")
@operator_required
def compare_jobs() -> Response:
    """Two jobs on the images both predicted: the numbers of the compare page (and of ``producer compare --json``)."""
    job_a, job_b = comparisons.required_job_ids()
    result = comparisons.comparison_or_404(job_a, job_b)
    return jsonify({**result.as_json(), "page_url": url_for("views.compare", a=job_a, b=job_b)})


def wait_seconds() -> float:
    return float_arg("wait", 0.0, 0.0, MAX_WAIT_SECONDS)


def uploaded_image() -> tuple[bytes, str | None]:
    """The image bytes and file name from a multipart upload or a raw body of an image type."""
    if request.mimetype == "multipart/form-data":
        upload = request.files.get("file")
        if upload is None:
            raise BadRequest(f"no field named 'file' in the form: {UPLOAD_HELP}")
        return upload.read(), upload.filename
    if request.mimetype.startswith(RAW_IMAGE_TYPES):
        return request.get_data(cache=False), None
    raise UnsupportedMediaType(f"Content-Type {request.mimetype or '(none)'} is not accepted: {UPLOAD_HELP}")


def prediction_response(
    prediction: predictions.Prediction | None, wait: float, just_created: bool
) -> tuple[Response, int]:
    """The prediction as JSON, with its token's URLs. A new upload answers 202 unless the client waited
    and the result came."""
    if prediction is None or prediction.token is None:
        raise NotFound("there is no prediction with that token")
    body = predictions.prediction_body(prediction, lambda endpoint, token: url_for(endpoint, token=token))
    response = jsonify(body)
    response.headers["Location"] = body["status_url"]
    return response, predictions.answer_status(prediction, wait, just_created)


def json_object() -> dict[str, Any]:
    if not request.is_json:
        raise UnsupportedMediaType(
            f"Content-Type {request.mimetype or '(none)'} is not accepted: send application/json"
        )
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest('the body must be a JSON object such as {"split": "test", "label": 7, "limit": 100}')
    return body


def job_selection(body: dict[str, Any]) -> tuple[str | None, int | None, int | None]:
    """Validate {"split", "label", "limit"}; every field is optional."""
    unknown = sorted(set(body) - JOB_FIELDS)
    if unknown:
        raise BadRequest(f"unknown fields {', '.join(unknown)}; accepted: {', '.join(sorted(JOB_FIELDS))}")
    split, label, limit = body.get("split"), body.get("label"), body.get("limit")
    if split is not None and split not in JOB_SPLITS:
        raise BadRequest(f"split must be one of {', '.join(JOB_SPLITS)}")
    if label is not None and not (is_whole_number(label) and 0 <= label < NUM_CLASSES):
        raise BadRequest("label must be a digit from 0 to 9")
    if limit is not None and not (is_whole_number(limit) and 1 <= limit <= MAX_ROW_ID):
        raise BadRequest("limit must be a whole number of at least 1")
    return split, label, limit


def job_model_names(body: dict[str, Any]) -> tuple[str | None, str | None]:
    """{"model", "shadow"}: a version or alias each, both optional (model: production)."""
    names = body.get("model"), body.get("shadow")
    if not all(name is None or isinstance(name, str) for name in names):
        raise BadRequest("model and shadow must be a model version or alias, such as production")
    return names[0] or None, names[1] or None


def job_options(body: dict[str, Any]) -> tuple[str, str | None]:
    """{"priority", "callback_url"}: both optional (normal, no webhook)."""
    priority, callback_url = body.get("priority") or "normal", body.get("callback_url")
    if not isinstance(priority, str) or not (callback_url is None or isinstance(callback_url, str)):
        raise BadRequest(f"priority must be one of {', '.join(jobs.fair_share.PRIORITIES)}; callback_url a URL")
    return priority, callback_url or None


def is_whole_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
