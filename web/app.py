"""The Flask application factory.

    python -m web.serve --bind 0.0.0.0:8000     # deployment (granian; web/serve.py)
    flask --app web.app run --debug            # development

Creating the app imports no TensorFlow: predictions are sent to the worker by task name.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask
from flask.json.provider import DefaultJSONProvider
from flask_wtf.csrf import CSRFProtect

from shared.config import Settings, load_settings
from shared.host import memory
from web import access_log, api, auth, backends, batches, bodies, errors, exports, limits, metrics, security, views
from web.params import RowIdConverter, UploadTokenConverter

log = logging.getLogger(__name__)

# Each page reloads itself this often while a prediction or job is unfinished.
REFRESH_SECONDS = 1
MAX_FORM_PARTS = 50


class BoundedJSONProvider(DefaultJSONProvider):
    """Flask's JSON, but a body nested deeper than the parser's recursion is malformed JSON (a 400 through
    ``request.get_json``), not a RecursionError that would end as a 500."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("the JSON is nested too deeply") from None


def create_app(test_config: Mapping[str, Any] | None = None, settings: Settings | None = None) -> Flask:
    """Build the app from ``settings`` (default: read now); ``test_config`` overrides Flask config keys."""
    config = settings or load_settings()
    # Each serving process builds its app: the start of the process, before its threads decode anything.
    memory.return_memory_after_bursts()
    app = Flask(__name__)
    app.json = BoundedJSONProvider(app)
    app.config.from_mapping(
        SECRET_KEY=config.secret_key,
        MAX_CONTENT_LENGTH=config.max_upload_bytes,
        # A drawing arrives as a file part, but keep plain fields within the same limit.
        MAX_FORM_MEMORY_SIZE=config.max_upload_bytes,
        # Every form here has a handful of fields: a body of many tiny parts is only work for the parser.
        MAX_FORM_PARTS=MAX_FORM_PARTS,
        REFRESH_SECONDS=REFRESH_SECONDS,
        MNIST_SETTINGS=config,
    )
    if test_config:
        app.config.from_mapping(test_config)
    app.url_map.converters["id"] = RowIdConverter
    app.url_map.converters["token"] = UploadTokenConverter
    access_log.init_app(app)  # first: its after_request hook runs last and logs the final status
    bodies.init_app(app, config)  # before the CSRF check, which reads the form
    csrf = CSRFProtect(app)
    csrf.exempt(api.blueprint)
    security.init_app(app, config)
    backends.init_app(app)
    errors.init_app(app)
    auth.init_app(app, csrf)
    app.register_blueprint(views.blueprint)
    app.register_blueprint(api.blueprint)
    app.register_blueprint(metrics.blueprint)
    app.register_blueprint(exports.blueprint)
    app.register_blueprint(batches.blueprint)
    csrf.exempt(batches.api_blueprint)
    app.register_blueprint(batches.api_blueprint)
    limits.init_app(app, config)
    if config.public_insights:
        log.warning(
            "PUBLIC_INSIGHTS is on: the operator pages and POST /api/jobs are open to anyone who can reach this server"
        )
    return app
