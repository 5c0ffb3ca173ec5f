"""Security headers on every response, the session cookie's flags, and trusted reverse proxies.

A small after-request hook rather than flask-talisman: the policy is a handful of fixed headers
that fit on one screen and are tested as they are, and talisman's other work (redirecting to
HTTPS, which belongs to the TLS proxy in front) would only need turning off.

The Content-Security-Policy allows scripts and styles from this site only: the pages have no
inline script, no inline style and no event-handler attribute (bars are <meter> and <progress>
elements, heat-map shades are CSS classes), so neither ``'unsafe-inline'`` is needed.
"""

from __future__ import annotations

from datetime import timedelta

from flask import Flask, Response, request
from werkzeug.middleware.proxy_fix import ProxyFix

from shared.config import Settings

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    # An upload's URL is its only key: never send it to another site, nor even to this one.
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
}
# Pages and answers may hold an operator's data or an upload's result: no shared cache may keep them.
NO_STORE = "no-store"
HSTS = "max-age=31536000"
# A sign-in lasts at most this long after the session was last written.
SESSION_LIFETIME = timedelta(hours=12)


def init_app(app: Flask, config: Settings) -> None:
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=config.production,
        # __Host-: the browser takes it only over HTTPS, for this host and path /, so no sibling domain can set it.
        SESSION_COOKIE_NAME="__Host-session" if config.production else "session",
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
    )
    if config.trusted_proxy_hops:
        hops = config.trusted_proxy_hops
        # The client address and scheme from the last ``hops`` proxies' headers; any hop before them is the client's
        # word.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]
    app.after_request(add_security_headers)


def add_security_headers(response: Response) -> Response:
    """What every answer carries unless it set its own: errors and 429s too (this runs after their handlers).
    The answer's own header names are read once, rather than searched again for each of ours."""
    present = {name.lower() for name in response.headers.keys()}
    extra = {**HEADERS, "Cache-Control": NO_STORE}
    if request.is_secure:
        extra["Strict-Transport-Security"] = HSTS
    response.headers.extend([(name, value) for name, value in extra.items() if name.lower() not in present])
    return response
