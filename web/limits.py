"""Per-client rate limits (Flask-Limiter, counted in Redis so every web process shares them).

- uploads, the form and the API together: UPLOAD_RATE_LIMIT per client (default 60 a minute);
- failed sign-ins: SIGNIN_RATE_LIMIT per client (default 5 a minute and 20 an hour); a
  successful one costs nothing.

A client is its address (``request.remote_addr``, which ProxyFix rewrites only for the configured
number of trusted proxies); an IPv6 client is its /64, which is what one subscriber gets. The
window moves (limits' moving-window strategy): no burst of twice the limit across a boundary.
Past a limit the answer is 429 with Retry-After, in the same shape as every other error.
"""

from __future__ import annotations

import ipaddress
import math
import time
from typing import Any

from flask import Flask, Response, current_app, request
from flask_limiter import Limiter, RateLimitExceeded

from shared import observability
from shared.config import Settings
from web import errors

LIMITER_EXTENSION = "mnist_limiter"
UPLOAD_ENDPOINTS = ("views.predict", "api.create_prediction")
UPLOAD_SCOPE = "uploads"  # the form's and the API's uploads share one count per client
SIGN_IN_ENDPOINT = "auth.sign_in"


def client_key() -> str:
    return client_key_of(request.remote_addr or "unknown")


def client_key_of(address: str) -> str:
    """Whom a limit counts: the address, an IPv6 address's /64."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return str(parsed)


def init_app(app: Flask, config: Settings) -> None:
    """After the blueprints are registered: the limits wrap their view functions."""
    enabled = bool(config.upload_rate_limit or config.signin_rate_limit)
    limiter = Limiter(
        client_key,
        storage_uri=config.redis_url if enabled else "memory://",
        key_prefix=key_prefix(config),
        strategy="moving-window",
        headers_enabled=False,  # Retry-After goes on the 429 alone (see too_many_requests)
        enabled=enabled,
    )
    limiter.init_app(app)
    app.extensions[LIMITER_EXTENSION] = limiter
    # Flask-Limiter checks a route's own limits in the wrapper its decorator returns: wrap this app's views.
    views: dict[str, Any] = app.view_functions  # typed for sync and async views; ours are sync
    if config.upload_rate_limit:
        uploads = limiter.shared_limit(
            config.upload_rate_limit, scope=UPLOAD_SCOPE, methods=["POST"], error_message=upload_limit_message(config)
        )
        for endpoint in UPLOAD_ENDPOINTS:
            views[endpoint] = uploads(views[endpoint])
    if config.signin_rate_limit:
        sign_ins = limiter.limit(
            config.signin_rate_limit,
            methods=["POST"],
            deduct_when=lambda response: response.status_code != 303,  # a failed sign-in
            error_message=f"too many failed sign-ins: at most {config.signin_rate_limit}",
        )
        views[SIGN_IN_ENDPOINT] = sign_ins(views[SIGN_IN_ENDPOINT])
    app.register_error_handler(RateLimitExceeded, too_many_requests)


def too_many_requests(error: RateLimitExceeded) -> tuple[Response | str, int, dict[str, str]]:
    """429 in the usual error shape, with Retry-After: seconds until the client's oldest counted request
    leaves the window."""
    limiter: Limiter = current_app.extensions[LIMITER_EXTENSION]
    breached = [limit for limit in limiter.current_limits if limit.breached] or limiter.current_limits
    reset_at = max((limit.window.reset_time for limit in breached), default=time.time() + 1)
    retry_after = seconds_until(reset_at)
    observability.metrics.record_refusal(
        error.code, "signin_rate_limit" if request.endpoint == SIGN_IN_ENDPOINT else "upload_rate_limit"
    )
    body, status = errors.error_response(error.code, refusal_message(error.description or "", retry_after))
    return body, status, {"Retry-After": str(retry_after)}


def key_prefix(config: Settings) -> str:
    return f"{config.queue_prefix}.limits"


def upload_limit_message(config: Settings) -> str:
    return f"too many uploads: at most {config.upload_rate_limit}"


def seconds_until(reset_at: float) -> int:
    """Retry-After: whole seconds until the client's oldest counted request leaves the window, at least 1."""
    return max(1, math.ceil(reset_at - time.time()))


def refusal_message(limit_message: str, retry_after: int) -> str:
    return f"{limit_message}; try again in {retry_after} seconds"
