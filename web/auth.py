"""Who may do what. Anyone: the home page, uploads, and their own upload's result by its token.
Operators: every other page and the jobs API.

Pages sign in with a session (Flask-Login; the cookie is signed with SECRET_KEY, HttpOnly,
SameSite=Lax, Secure in production), the API with ``Authorization: Bearer <token>`` (hashed in
the database, ``producer tokens create``). A session also works on the API, for the pages' "as
JSON" links, but an unsafe method then needs the CSRF token as well, as a form would: no cookie
alone may start a job. PUBLIC_INSIGHTS opens the operator routes to everyone (a private demo).
"""

from __future__ import annotations

import functools
import logging
import urllib.parse
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, current_app, g, redirect, render_template, request, session, url_for
from flask_login import LoginManager, current_user, login_user, logout_user
from flask_wtf.csrf import CSRFProtect
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import NotFound, Unauthorized
from werkzeug.wrappers import Response

from shared import operators
from web import backends, errors

log = logging.getLogger(__name__)

blueprint = Blueprint("auth", __name__)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
BEARER, SESSION = "bearer", "session"
SIGN_IN_FAILED = "wrong name or password"
REALM = "mnist-queue"
MAX_ID_DIGITS = 18  # an operator id fits a BIGINT
# A failed sign-in is a 401, which must name a scheme: this one makes no browser open a dialog.
FORM_REALM = f'Form realm="{REALM}"'


class SignedInOperator:
    """Flask-Login's user: an operator, with how this request proved it (session or token)."""

    is_authenticated = True
    is_active = True
    is_anonymous = False

    def __init__(self, operator: operators.secrets.Operator, via: str) -> None:
        self.operator = operator
        self.via = via

    @property
    def name(self) -> str:
        return self.operator.name

    def get_id(self) -> str:
        # The credential tag changes with the password: a session made before a change ends with it.
        return f"{self.operator.id}:{self.operator.credential_tag}"


def init_app(app: Flask, csrf: CSRFProtect) -> None:
    manager = LoginManager()
    manager.init_app(app)
    manager.user_loader(load_session_operator)
    manager.request_loader(load_token_operator)
    manager.unauthorized_handler(refuse_anonymous)
    app.extensions["mnist_csrf"] = csrf
    app.context_processor(lambda: {"operator_access": operator_access()})
    app.register_blueprint(blueprint)


def load_session_operator(user_id: str) -> SignedInOperator | None:
    """The session's operator; on the API a bearer token, when sent, wins over the session."""
    if bearer_token() is not None:
        return None  # Flask-Login then asks load_token_operator
    operator_id, _, tag = user_id.partition(":")
    if not (operator_id.isascii() and operator_id.isdigit() and len(operator_id) <= MAX_ID_DIGITS):
        return None
    operator = operators.secrets.operator_for_session(backends.get_db(), int(operator_id), tag)
    return SignedInOperator(operator, SESSION) if operator else None


def load_token_operator(_request: Any) -> SignedInOperator | None:
    token = bearer_token()
    if token is None:
        return None
    operator = operators.secrets.operator_for_token(backends.get_db(), token)
    if operator is None:
        g.bad_bearer_token = True
        return None
    return SignedInOperator(operator, BEARER)


def bearer_token() -> str | None:
    """The token of ``Authorization: Bearer ...`` on an API request, else None (pages ignore the header)."""
    if not errors.wants_json():
        return None
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == BEARER and token.strip() else None


def operator_access() -> bool:
    return current_app.config["MNIST_SETTINGS"].public_insights or current_user.is_authenticated


def operator_name() -> str:
    """Who makes this request, for the record (a cancel): the operator's name, else "public" (PUBLIC_INSIGHTS)."""
    return str(current_user.name) if current_user.is_authenticated else "public"


def refuse_anonymous() -> Response:
    """401 with WWW-Authenticate on the API; elsewhere to the sign-in page, and back after it."""
    if errors.wants_json():
        bad = g.get("bad_bearer_token", False)
        message = (
            "the bearer token is not valid (unknown or revoked)"
            if bad
            else "sign in first: send Authorization: Bearer <token>"
        )
        challenge = WWWAuthenticate("Bearer", {"realm": REALM, **({"error": "invalid_token"} if bad else {})})
        raise Unauthorized(message, www_authenticate=challenge)
    return redirect(url_for("auth.sign_in", next=request.full_path.rstrip("?")))


def operator_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """For operators only (or everyone with PUBLIC_INSIGHTS); a session on an unsafe API call also needs
    the CSRF token."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not operator_access():
            return refuse_anonymous()
        if request.method not in SAFE_METHODS and errors.wants_json() and getattr(current_user, "via", None) == SESSION:
            if current_app.config.get("WTF_CSRF_ENABLED", True):
                current_app.extensions["mnist_csrf"].protect()
        return view(*args, **kwargs)

    return wrapper


def operator_or_404(view: Callable[..., Any]) -> Callable[..., Any]:
    """For operators only, and a plain 404 to anyone else: the old numeric URLs of uploads and their pictures,
    which must not even tell whether an id exists (nor send an <img> to a sign-in page)."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not operator_access():
            raise NotFound()
        return view(*args, **kwargs)

    return wrapper


def refuse_bad_bearer_token() -> None:
    """Before any /api/ request: a token that was sent but is not valid is a 401, even where none is
    needed, so that a client never mistakes itself for signed in. (The health checks take no credential.)"""
    if request.path.startswith("/api/") and bearer_token() is not None and not current_user.is_authenticated:
        refuse_anonymous()


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this site only (no open redirect)."""
    if not target:
        return url_for("views.jobs")
    if not target.isprintable() or not target.isascii():
        return url_for(
            "views.jobs"
        )  # a line break would split the Location header; anything else unprintable is no path of ours
    parts = urllib.parse.urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith(("//", "/\\")) or "\\" in target:
        return url_for("views.jobs")
    return target


def client_address() -> str:
    return request.remote_addr or "unknown"


@blueprint.get("/sign-in")
def sign_in_page() -> str:
    """The form alone: a GET or HEAD never reads a password, never signs in and never counts as a failure."""
    return render_template("sign_in.html", next_page=safe_next(request.args.get("next")))


@blueprint.post("/sign-in")
def sign_in() -> Response | tuple[str, int, dict[str, str]]:
    next_page = safe_next(request.values.get("next"))
    name = request.form.get("name", "")
    password = request.form.get("password", "")
    # No rehash: the web's database role may not write passwords (deploy/postgres-init).
    operator = (
        operators.secrets.authenticate(backends.get_db(), name, password, rehash=False) if name and password else None
    )
    if operator is None:
        # The name as data (repr: no line breaks into the log), never the password.
        log.warning("sign-in failed for operator %r from %r", name[:100], client_address())
        page = render_template("sign_in.html", next_page=next_page, name=name, error=SIGN_IN_FAILED)
        return page, 401, {"WWW-Authenticate": FORM_REALM}
    session.clear()  # nothing from before the sign-in is carried into the operator's session
    login_user(SignedInOperator(operator, SESSION))
    log.info("operator %r signed in from %r", operator.name, client_address())
    return redirect(next_page, code=303)


@blueprint.post("/sign-out")
def sign_out() -> Response:
    """Ends every session of the operator, this one and any copy of its cookie, not just this browser's."""
    if getattr(current_user, "via", None) == SESSION:
        operators.store.end_sessions(backends.get_db(), current_user.operator.id)
    logout_user()
    session.clear()
    return redirect(url_for("views.home"), code=303)
