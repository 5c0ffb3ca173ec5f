"""What the compare page and ``GET /api/compare`` share: the two job ids of the query, and their comparison or a 404."""

from __future__ import annotations

from werkzeug.exceptions import BadRequest, NotFound

from shared import jobs
from shared.digits import MAX_ROW_ID
from shared.jobs.comparison import Comparison, load_comparison
from web import backends
from web.params import int_arg

JOB_ARGS = ("a", "b")


def job_ids(required: bool) -> tuple[int | None, int | None]:
    """``?a=JOB&b=JOB``: each a job id or, when not given, None (or a 400 when ``required``)."""
    a, b = (int_arg(name, 0, 1, MAX_ROW_ID) or None for name in JOB_ARGS)
    if required and (a is None or b is None):
        raise BadRequest("name the two jobs to compare: ?a=JOB&b=JOB")
    return a, b


def required_job_ids() -> tuple[int, int]:
    """``?a=JOB&b=JOB``, both given (else a 400)."""
    a, b = job_ids(required=True)
    assert a is not None and b is not None  # job_ids refused the request otherwise
    return a, b


def comparison_or_404(job_a: int, job_b: int) -> Comparison:
    try:
        return load_comparison(backends.get_db(), job_a, job_b)
    except jobs.comparison_store.UnknownJob as error:
        raise NotFound(str(error)) from None
