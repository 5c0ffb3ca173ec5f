"""A job's webhook: when it ends (done, failed or cancelled), a signed JSON summary is POSTed to its URL.

The URL is checked at submit (``check_url``): http or https, to a host of WEBHOOK_ALLOWED_HOSTS, with
WEBHOOK_SECRET set; anything else is refused before the job is recorded. The worker delivers it
(``worker/lifecycle.py``: a Celery task sent when the end is claimed, retried with exponential backoff);
``deliver`` makes one attempt and records it in ``webhook_deliveries``, whatever its outcome.

The signature is Stripe's scheme: header ``Mnist-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of
"<t>.<body>" under WEBHOOK_SECRET>``. The time is signed with the body, so a receiver that checks its age
(``verify``'s ``tolerance``) refuses a replayed old delivery. ``id`` in the body is the same for every
attempt at one job end: a receiver that saw it already may ignore it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from shared.config import Settings
from shared.db.connection import Connection
from shared.jobs import lifecycle_store, store

SIGNATURE_HEADER = "Mnist-Signature"
SCHEMES = ("http", "https")
TIMEOUT_SECONDS = 10
# A receiver's answer is kept this long in the attempt's record (the rest is not ours to store).
MAX_ERROR_CHARS = 300
MAX_URL_CHARS = 2000
DEFAULT_TOLERANCE_SECONDS = 300


class WebhookRefused(ValueError):
    """A webhook URL that may not be called: nothing is recorded."""


def check_url(url: str, settings: Settings) -> str:
    """``url`` when a job may call it, else WebhookRefused saying why."""
    if len(url) > MAX_URL_CHARS:
        raise WebhookRefused(f"the webhook URL is longer than {MAX_URL_CHARS} characters")
    try:
        parts = urllib.parse.urlsplit(url)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as error:
        raise WebhookRefused(f"the webhook URL is not a URL: {error}") from None
    if parts.scheme.lower() not in SCHEMES:
        raise WebhookRefused(f"the webhook URL must be http or https, got {parts.scheme[:20] or 'no scheme'!r}")
    if host not in allowed_hosts(settings):
        raise WebhookRefused(f"the webhook host {host[:100]!r} is not in WEBHOOK_ALLOWED_HOSTS")
    if not settings.webhook_secret:
        raise WebhookRefused("webhooks need WEBHOOK_SECRET, which signs them")
    return url


def allowed_hosts(settings: Settings) -> frozenset[str]:
    """WEBHOOK_ALLOWED_HOSTS as lower-case host names."""
    return frozenset(host.strip().lower() for host in settings.webhook_allowed_hosts.split(",") if host.strip())


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The signature header's value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(
    secret: str, body: bytes, header: str, tolerance: float = DEFAULT_TOLERANCE_SECONDS, now: float | None = None
) -> bool:
    """The receiver's check: the header signs this body with this secret, and was made within ``tolerance`` s."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        fields.setdefault(key, []).append(value)
    try:
        timestamp = int(fields["t"][0])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = sign(secret, body, timestamp).rpartition("v1=")[2]
    return any(hmac.compare_digest(expected, candidate) for candidate in fields.get("v1", []))


def summary(job: dict[str, Any]) -> dict[str, Any]:
    """The body of a job end's webhook."""

    def when(key: str) -> str | None:
        return job[key].isoformat() if job.get(key) else None

    return {
        "id": f"job-{job['id']}-{job['status']}",
        "type": f"job.{job['status']}",
        "job": {
            "id": job["id"],
            "status": job["status"],
            "total_images": job["total_images"],
            "done_count": job["done_count"],
            "failed_count": job["failed_count"],
            "model_version": job["model_version"],
            "priority": job["priority"],
            "created_at": when("created_at"),
            "finished_at": when("finished_at"),
            "cancelled_at": when("cancelled_at"),
            "cancelled_by": job["cancelled_by"],
        },
    }


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect would lead past WEBHOOK_ALLOWED_HOSTS: it is an answer like any other, not followed."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def post(url: str, body: bytes, signature: str, timeout: float = TIMEOUT_SECONDS) -> tuple[int | None, str | None]:
    """POST once: (HTTP status or None, error or None)."""
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature, "User-Agent": "mnist-queue-webhook"}
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return response.status, None
    except urllib.error.HTTPError as error:
        return error.code, f"HTTP {error.code} {error.reason}"[:MAX_ERROR_CHARS]
    except (urllib.error.URLError, OSError, ValueError) as error:
        return None, str(getattr(error, "reason", error))[:MAX_ERROR_CHARS]


def deliver(conn: Connection, job_id: int, settings: Settings) -> bool | None:
    """One attempt at the job's webhook, recorded: True delivered (now or before), False failed (try again),
    None nothing to do (no URL, not ended, another attempt of this job under way, or a URL no longer allowed).

    ``conn`` is the caller's own: the per-job lock is its session's while the request runs."""
    if not lifecycle_store.lock_delivery(conn, job_id):
        return None  # a duplicate of this delivery runs elsewhere; it retries by itself if it fails
    try:
        job = store.get_job(conn, job_id)
        if job is None or not job["callback_url"] or job["status"] not in store.ENDED:
            return None
        if any(attempt["delivered"] for attempt in lifecycle_store.deliveries(conn, job_id)):
            return True
        url = job["callback_url"]
        try:
            check_url(url, settings)
        except WebhookRefused as error:  # the settings changed since submit: never call it
            lifecycle_store.record_delivery(conn, job_id, job["status"], url, None, str(error), False)
            return None
        body = json.dumps(summary(job), separators=(",", ":")).encode()
        code, problem = post(url, body, sign(settings.webhook_secret, body, int(time.time())))
        delivered = code is not None and 200 <= code < 300
        problem = None if delivered else problem or f"HTTP {code}"
        lifecycle_store.record_delivery(conn, job_id, job["status"], url, code, problem, delivered)
        return delivered
    finally:
        lifecycle_store.unlock_delivery(conn, job_id)
