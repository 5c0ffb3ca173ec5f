"""The pages: predict (upload or draw), one prediction, jobs, a job, two jobs compared, mistakes, low confidence,
browse.

Anyone may predict and see their own prediction by its token; every other page is for operators (web/auth.py).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, redirect, render_template, request, url_for
from werkzeug.exceptions import NotFound
from werkzeug.wrappers import Response as WerkzeugResponse

from shared import images, jobs, models
from shared.digits import MAX_ROW_ID, NUM_CLASSES
from shared.images.codec import decode_image, png_bytes
from shared.jobs.reports import LOW_CONFIDENCE_THRESHOLD, build_job_report, default_low_confidence_threshold
from web import api, backends, comparisons, keyset, predictions
from web.auth import operator_or_404, operator_required
from web.heatmap import difference_heatmap, heatmap
from web.params import choice_arg, float_arg, int_arg

blueprint = Blueprint("views", __name__)

GALLERY_PAGE_SIZE = 48
JOBS_PAGE_SIZE = 25
MAX_PAGE = 100_000
JOB_KINDS = {"bulk": "bulk", "upload": "upload", "all": None}
JOB_STATES = {"all": None, **{state: state for state in jobs.store.STATES}}
BROWSE_BY = ("label", "prediction")
# Stored images never change, so the browser that fetched one may keep it.
IMAGE_CACHE_SECONDS = 86_400
UPLOAD_FIELD = "image"


@blueprint.get("/")
def home() -> str:
    return render_template("home.html")


@blueprint.post("/predict")
def predict() -> WerkzeugResponse | tuple[str, int]:
    upload = request.files.get(UPLOAD_FIELD)
    if upload is None or not upload.filename:
        return render_template("home.html", error="choose a picture to upload, or draw a digit"), 400
    try:
        token = predictions.accept_upload(
            backends.get_db(), backends.app_settings(), upload.read(), upload.filename
        ).token
    except ValueError as error:
        return render_template("home.html", error=f"{upload.filename}: {error}"), 400
    return redirect(url_for("views.prediction", token=token), code=303)


@blueprint.get("/predictions/<token:token>")
def prediction(token: str) -> str:
    """The uploader's own result: whoever holds the token, and no one can guess one."""
    result = predictions.get_prediction_by_token(backends.get_db(), token)
    if result is None:
        raise NotFound("there is no prediction with that token")
    return prediction_page(
        result, url_for("views.prediction_image", token=token), url_for("api.show_prediction", token=token)
    )


@blueprint.get("/predictions/<token:token>/image.png")
def prediction_image(token: str) -> Response:
    """The upload as the model saw it, for whoever holds the token."""
    result = predictions.get_prediction_by_token(backends.get_db(), token)
    if result is None:
        raise NotFound("there is no prediction with that token")
    response = stored_image_response(result.image_id, "the upload's picture")
    # Behind a token that is its only key: no cache, not even the browser's, keeps a copy past the page.
    response.cache_control.no_store = True
    response.cache_control.private = None
    response.cache_control.max_age = None
    return response


@blueprint.get("/predictions/<id:job_id>")
@operator_or_404
def upload_job(job_id: int) -> str:
    """An upload by its job id, for operators (the jobs page links here). Anyone else: 404, as for an id
    that does not exist."""
    result = predictions.get_prediction(backends.get_db(), job_id)
    if result is None:
        raise NotFound(f"there is no upload {job_id}")
    json_url = (
        url_for("api.show_prediction", token=result.token) if result.token else url_for("api.show_job", job_id=job_id)
    )
    return prediction_page(result, url_for("views.image_png", image_id=result.image_id), json_url)


def prediction_page(result: predictions.Prediction, image_url: str, json_url: str) -> str:
    refresh = None if result.finished else refresh_seconds()
    model = models.registry.describe_optional(backends.get_db(), result.model_version)
    return render_template(
        "prediction.html", prediction=result, model=model, image_url=image_url, json_url=json_url, refresh=refresh
    )


@blueprint.get("/jobs", endpoint="jobs")
@operator_required
def jobs_page() -> str:
    kind, state = choice_arg("kind", "bulk", JOB_KINDS), choice_arg("state", "all", JOB_STATES)
    page = page_arg()
    offset = (page - 1) * JOBS_PAGE_SIZE
    conn = backends.get_db()
    after = keyset.after_id()
    rows = jobs.queries.list_jobs(conn, JOB_KINDS[kind], JOBS_PAGE_SIZE + 1, offset, after, JOB_STATES[state])
    running = any(row["status"] in jobs.store.UNFINISHED for row in rows)
    return render_template(
        "jobs.html",
        jobs=rows[:JOBS_PAGE_SIZE],
        kind=kind,
        kinds=JOB_KINDS,
        state=state,
        states=JOB_STATES,
        pager=pager(page, next_cursor(rows, JOBS_PAGE_SIZE, keyset.job_cursor), kind=kind, state=state),
        refresh=refresh_seconds() if running else None,
    )


@blueprint.get("/jobs/<id:job_id>")
@operator_required
def job(job_id: int) -> str:
    report = build_job_report(backends.get_db(), job_id)
    if report is None:
        raise NotFound(f"there is no job {job_id}")
    refresh = refresh_seconds() if report.job["status"] in jobs.store.UNFINISHED else None
    summary = predictions.job_summary(report, jobs.lifecycle_store.deliveries(backends.get_db(), job_id))
    model = models.registry.describe_optional(backends.get_db(), summary["model_version"])
    return render_template(
        "job.html", report=report, summary=summary, model=model, cells=heatmap(report.confusion), refresh=refresh
    )


@blueprint.post("/jobs/<id:job_id>/cancel")
@operator_required
def cancel_job(job_id: int) -> WerkzeugResponse:
    """The job page's cancel button (a form with the CSRF token); back to the job page, which shows who and when."""
    api.cancel(job_id)
    return redirect(url_for("views.job", job_id=job_id), code=303)


@blueprint.get("/compare")
@operator_required
def compare() -> str:
    """Two jobs on the images both predicted (?a=JOB&b=JOB); without both, the form to name them."""
    job_a, job_b = comparisons.job_ids(required=False)
    if job_a is None or job_b is None:
        return render_template("compare.html", comparison=None, a=job_a, b=job_b, refresh=None)
    result = comparisons.comparison_or_404(job_a, job_b)
    running = any(job["status"] != "done" for job in (result.job_a, result.job_b))
    return render_template(
        "compare.html",
        comparison=result,
        a=job_a,
        b=job_b,
        cells=difference_heatmap(result.confusion_diff),
        refresh=refresh_seconds() if running else None,
    )


@blueprint.get("/mistakes")
@operator_required
def mistakes() -> str:
    page = page_arg()
    job_id = optional_job_id()
    offset, after = (page - 1) * GALLERY_PAGE_SIZE, keyset.after_mistake()
    rows = jobs.queries.wrong_predictions(
        backends.get_db(), job_id=job_id, limit=GALLERY_PAGE_SIZE + 1, offset=offset, after=after
    )
    intro = "Labelled images the model got wrong, newest first."
    return gallery("Mistakes", intro, rows, page, keyset.mistake_cursor, job_id=job_id)


@blueprint.get("/low-confidence")
@operator_required
def low_confidence() -> str:
    page = page_arg()
    # The production model's card chooses the default; ?threshold=0.8 (the seed's) or any other stays selectable.
    threshold = float_arg("threshold", LOW_CONFIDENCE_THRESHOLD, 0.0, 1.0) if request.args.get("threshold") else None
    if threshold is None:
        threshold = default_low_confidence_threshold(backends.get_db())
    job_id = optional_job_id()
    offset, after = (page - 1) * GALLERY_PAGE_SIZE, keyset.after_low_confidence()
    rows = jobs.queries.low_confidence_predictions(
        backends.get_db(), threshold, GALLERY_PAGE_SIZE + 1, offset, job_id, after
    )
    intro = f"Predictions with confidence under {threshold:g}, least sure first."
    return gallery(
        "Low confidence", intro, rows, page, keyset.low_confidence_cursor, job_id=job_id, threshold=threshold
    )


@blueprint.get("/browse")
@operator_required
def browse() -> str:
    by = choice_arg("by", "label", BROWSE_BY)
    digit = int_arg("digit", -1, 0, NUM_CLASSES - 1) if request.args.get("digit") else None
    if digit is None:
        return render_template(
            "gallery.html", title="Browse", intro="Pick a digit.", items=None, by=by, digit=None, pager=None
        )
    page = page_arg()
    offset, before = (page - 1) * GALLERY_PAGE_SIZE, keyset.after_id()
    rows = jobs.queries.images_of_digit(
        backends.get_db(), digit, by == "prediction", GALLERY_PAGE_SIZE + 1, offset, before
    )
    source = "whose true label is" if by == "label" else "whose latest prediction is"
    return gallery(
        f"Browse: {digit}", f"Stored images {source} {digit}.", rows, page, keyset.image_cursor, by=by, digit=digit
    )


@blueprint.get("/images/<id:image_id>.png")
@operator_or_404
def image_png(image_id: int) -> Response:
    return stored_image_response(image_id, f"image {image_id}")


def stored_image_response(image_id: int, name: str) -> Response:
    data = images.store.get_image_data(backends.get_db(), image_id)
    if data is None:
        raise NotFound(f"there is no {name}")
    try:
        image = decode_image(data)
    except ValueError as error:
        raise NotFound(f"{name} cannot be shown: {error}") from None
    response = current_app.response_class(png_bytes(image), mimetype="image/png")
    # Private: operators' images and uploads are not for shared caches.
    response.cache_control.private = True
    response.cache_control.max_age = IMAGE_CACHE_SECONDS
    return response


def gallery(
    title: str, intro: str, rows: list[dict[str, Any]], page: int, cursor: keyset.Cursor, **filters: Any
) -> str:
    """One page of image cards; ``filters`` are kept in the pager's links."""
    after = next_cursor(rows, GALLERY_PAGE_SIZE, cursor)
    return render_template(
        "gallery.html",
        title=title,
        intro=intro,
        items=rows[:GALLERY_PAGE_SIZE],
        pager=pager(page, after, **filters),
        **filters,
    )


def next_cursor(rows: list[dict[str, Any]], page_size: int, cursor: keyset.Cursor) -> str | None:
    """The cursor of the next page (the last row shown), when there is one: rows holds one row more than a page."""
    return cursor(rows[page_size - 1]) if len(rows) > page_size else None


def pager(page: int, after: str | None, **filters: Any) -> dict[str, Any]:
    """Links to the previous and next page of the current view, keeping its filters; "next" is a keyset cursor."""
    args = {**request.args.to_dict(), **filters}
    kept = {key: value for key, value in args.items() if value is not None and key not in ("page", "after")}
    endpoint = request.endpoint or ""  # a view's request always has one
    return {
        "page": page,
        "previous": url_for(endpoint, page=page - 1, **kept) if page > 1 else None,
        "next": url_for(endpoint, page=page + 1, after=after, **kept) if after else None,
    }


def page_arg() -> int:
    return int_arg("page", 1, 1, MAX_PAGE)


def optional_job_id() -> int | None:
    """The ``job`` filter of the gallery pages, when given."""
    return int_arg("job", 0, 1, MAX_ROW_ID) if request.args.get("job") else None


def refresh_seconds() -> int:
    return current_app.config["REFRESH_SECONDS"]
