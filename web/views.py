"""The pages: predict (upload or draw), one prediction, jobs, a job, mistakes, low confidence, browse."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, redirect, render_template, request, url_for
from werkzeug.exceptions import NotFound

from shared.db import images, queries
from shared.digits import MAX_ROW_ID, NUM_CLASSES
from shared.images import decode_image, png_bytes
from shared.reports import LOW_CONFIDENCE_THRESHOLD, build_job_report
from web import backends, predictions
from web.heatmap import heatmap
from web.params import choice_arg, float_arg, int_arg

blueprint = Blueprint("views", __name__)

GALLERY_PAGE_SIZE = 48
JOBS_PAGE_SIZE = 25
MAX_PAGE = 100_000
JOB_KINDS = {"bulk": "bulk", "upload": "upload", "all": None}
BROWSE_BY = ("label", "prediction")
# Stored images never change, so browsers may keep them.
IMAGE_CACHE_SECONDS = 86_400
UPLOAD_FIELD = "image"


@blueprint.get("/")
def home() -> str:
    return render_template("home.html")


@blueprint.post("/predict")
def predict() -> Response | tuple[str, int]:
    upload = request.files.get(UPLOAD_FIELD)
    if upload is None or not upload.filename:
        return render_template("home.html", error="choose a picture to upload, or draw a digit"), 400
    try:
        prediction_id = predictions.submit_upload(backends.get_db(), backends.app_settings(), upload.read(), upload.filename)
    except ValueError as error:
        return render_template("home.html", error=f"{upload.filename}: {error}"), 400
    return redirect(url_for("views.prediction", prediction_id=prediction_id), code=303)


@blueprint.get("/predictions/<id:prediction_id>")
def prediction(prediction_id: int) -> str:
    result = predictions.get_prediction(backends.get_db(), prediction_id)
    if result is None:
        raise NotFound(f"there is no prediction {prediction_id}")
    return render_template("prediction.html", prediction=result, refresh=None if result.finished else refresh_seconds())


@blueprint.get("/jobs")
def jobs() -> str:
    kind = choice_arg("kind", "bulk", JOB_KINDS)
    page = page_arg()
    rows = queries.list_jobs(backends.get_db(), JOB_KINDS[kind], JOBS_PAGE_SIZE + 1, (page - 1) * JOBS_PAGE_SIZE)
    running = any(row["status"] != "done" for row in rows)
    return render_template(
        "jobs.html",
        jobs=rows[:JOBS_PAGE_SIZE],
        kind=kind,
        kinds=JOB_KINDS,
        pager=pager(page, len(rows) > JOBS_PAGE_SIZE, kind=kind),
        refresh=refresh_seconds() if running else None,
    )


@blueprint.get("/jobs/<id:job_id>")
def job(job_id: int) -> str:
    report = build_job_report(backends.get_db(), job_id)
    if report is None:
        raise NotFound(f"there is no job {job_id}")
    refresh = refresh_seconds() if report.job["status"] != "done" else None
    summary = predictions.job_summary(report)
    return render_template("job.html", report=report, summary=summary, cells=heatmap(report.confusion), refresh=refresh)


@blueprint.get("/mistakes")
def mistakes() -> str:
    page = page_arg()
    job_id = optional_job_id()
    rows = queries.wrong_predictions(backends.get_db(), job_id=job_id, limit=GALLERY_PAGE_SIZE + 1, offset=(page - 1) * GALLERY_PAGE_SIZE)
    return gallery("Mistakes", "Labelled images the model got wrong, newest first.", rows, page, job_id=job_id)


@blueprint.get("/low-confidence")
def low_confidence() -> str:
    page = page_arg()
    threshold = float_arg("threshold", LOW_CONFIDENCE_THRESHOLD, 0.0, 1.0)
    job_id = optional_job_id()
    rows = queries.low_confidence_predictions(backends.get_db(), threshold, GALLERY_PAGE_SIZE + 1, (page - 1) * GALLERY_PAGE_SIZE, job_id)
    intro = f"Predictions with confidence under {threshold:g}, least sure first."
    return gallery("Low confidence", intro, rows, page, job_id=job_id, threshold=threshold)


@blueprint.get("/browse")
def browse() -> str:
    by = choice_arg("by", "label", BROWSE_BY)
    digit = int_arg("digit", -1, 0, NUM_CLASSES - 1) if request.args.get("digit") else None
    if digit is None:
        return render_template("gallery.html", title="Browse", intro="Pick a digit.", items=None, by=by, digit=None, pager=None)
    page = page_arg()
    rows = queries.images_of_digit(backends.get_db(), digit, by == "prediction", GALLERY_PAGE_SIZE + 1, (page - 1) * GALLERY_PAGE_SIZE)
    source = "whose true label is" if by == "label" else "whose latest prediction is"
    return gallery(f"Browse: {digit}", f"Stored images {source} {digit}.", rows, page, by=by, digit=digit)


@blueprint.get("/images/<id:image_id>.png")
def image_png(image_id: int) -> Response:
    data = images.get_image_data(backends.get_db(), image_id)
    if data is None:
        raise NotFound(f"there is no image {image_id}")
    try:
        image = decode_image(data)
    except ValueError as error:
        raise NotFound(f"image {image_id} cannot be shown: {error}") from None
    response = current_app.response_class(png_bytes(image), mimetype="image/png")
    response.cache_control.public = True
    response.cache_control.max_age = IMAGE_CACHE_SECONDS
    return response


def gallery(title: str, intro: str, rows: list[dict[str, Any]], page: int, **filters: Any) -> str:
    """One page of image cards; ``filters`` are kept in the pager's links."""
    has_next = len(rows) > GALLERY_PAGE_SIZE
    return render_template(
        "gallery.html", title=title, intro=intro, items=rows[:GALLERY_PAGE_SIZE], pager=pager(page, has_next, **filters), **filters
    )


def pager(page: int, has_next: bool, **filters: Any) -> dict[str, Any]:
    """Links to the previous and next page of the current view, keeping its filters."""
    kept = {key: value for key, value in {**request.args.to_dict(), **filters}.items() if value is not None and key != "page"}
    return {
        "page": page,
        "previous": url_for(request.endpoint, page=page - 1, **kept) if page > 1 else None,
        "next": url_for(request.endpoint, page=page + 1, **kept) if has_next else None,
    }


def page_arg() -> int:
    return int_arg("page", 1, 1, MAX_PAGE)


def optional_job_id() -> int | None:
    """The ``job`` filter of the gallery pages, when given."""
    return int_arg("job", 0, 1, MAX_ROW_ID) if request.args.get("job") else None


def refresh_seconds() -> int:
    return current_app.config["REFRESH_SECONDS"]
