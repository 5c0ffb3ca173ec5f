"""A job's results for operators: ``GET /api/jobs/<id>/results``, CSV or JSON Lines, streamed.

The rows leave as the server-side cursor reads them (``shared.jobs.export``), so the memory of a
download does not grow with the job. ``?after=<image id>&limit=N`` pages through them by keyset.
A job still running answers what is stored so far, with ``X-Results-Partial: true``.
"""

from __future__ import annotations

from collections.abc import Iterator

from flask import Blueprint, Response, request
from psycopg_pool import ConnectionPool
from werkzeug.exceptions import NotAcceptable, NotFound

from shared import jobs
from shared.db.connection import Connection
from shared.digits import MAX_ROW_ID
from web import backends
from web.auth import operator_required
from web.params import choice_arg, int_arg

blueprint = Blueprint("exports", __name__)
FORMAT_BY_MEDIA_TYPE = {"text/csv": "csv", "application/jsonl": "jsonl", "application/x-ndjson": "jsonl"}


def chosen_format() -> str:
    """``?format=`` if given, else the best of ``Accept`` (CSV when it names neither or anything)."""
    named = request.args.get("format")
    if named is not None:
        if named not in jobs.export.TEXT_FORMATS:
            raise NotAcceptable(f"format must be one of {', '.join(jobs.export.TEXT_FORMATS)}")
        return named
    best = request.accept_mimetypes.best_match(list(FORMAT_BY_MEDIA_TYPE), default="text/csv")
    return FORMAT_BY_MEDIA_TYPE.get(best or "text/csv", "csv")


def streamed(
    pool: ConnectionPool[Connection], job_id: int, after: int, limit: int | None, form: str, probabilities: bool
) -> Iterator[str]:
    """The text of the rows, read on a connection of the stream's own: the request's goes back to the pool
    when the view returns, before the body is sent; this one goes back when the last row is."""
    conn = pool.getconn()
    try:
        yield from jobs.export.text_pieces(
            jobs.export.records(conn, [job_id], after, limit, probabilities), form, probabilities
        )
    finally:
        pool.putconn(conn)


@blueprint.get("/api/jobs/<id:job_id>/results")
@operator_required
def job_results(job_id: int) -> Response:
    form = chosen_format()
    after = int_arg("after", 0, 0, MAX_ROW_ID)
    limit = int_arg("limit", 0, 0, MAX_ROW_ID) or None
    probabilities = choice_arg("probabilities", "0", ("0", "1", "true", "false")) in {"1", "true"}
    conn = backends.get_db()
    info = jobs.export.describe(conn, [job_id])
    if info is None:
        raise NotFound(f"there is no job {job_id}")
    pieces = streamed(backends.connection_pool(), job_id, after, limit, form, probabilities)
    response = Response(pieces, mimetype=jobs.export.MEDIA_TYPES[form])
    response.headers["X-Results-Partial"] = "true" if info.partial else "false"
    response.headers["X-Job-Status"] = "running" if info.partial else "done"
    if form == "csv" and not request.args.get("after"):
        response.headers["Content-Disposition"] = f'attachment; filename="job-{job_id}-results.csv"'
    return response
