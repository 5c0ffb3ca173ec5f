"""The model registry's rules: names that resolve to versions, aliases that move, and which file a version serves.

As in MLflow (``models:/mnist_cnn@champion``) and TF Serving's version labels, a job names a
model by an alias (``production``, the default; ``canary``; any other) or by its version, and
the name is resolved once, when the job is submitted: moving ``production`` changes the model
of new jobs only, and a job pinned to a version keeps it. Registration (files checked and
stored) is ``shared.training.registration``; this module needs no model runtime, so the web uses it.
"""

from __future__ import annotations

import re
from typing import Any

from shared.config import MODEL_PRECISIONS
from shared.db.connection import Connection
from shared.models import store

PRODUCTION = store.PRODUCTION
ALIAS_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,39}")
# A version id ends in 12 hex digits of its file's hash: an alias must not look like one.
VERSION_LIKE = re.compile(r".*-[0-9a-f]{12}")
# int8 is served when its test accuracy is at most this far below the float model's (0.05 points).
INT8_MAX_ACCURACY_DROP = 0.0005
MAX_NAME_CHARS = 200


class UnknownModel(ValueError):
    """A name that is neither an alias nor a registered version."""


def resolve(conn: Connection, name: str) -> str:
    """The version ``name`` (an alias, or a version) stands for now; UnknownModel when none."""
    check_name(name)
    version = store.resolve(conn, name)
    if version is None:
        raise unknown(name)
    return version


def check_name(name: str) -> None:
    """UnknownModel for what cannot name a model, before it is looked up."""
    if not name or len(name) > MAX_NAME_CHARS or "\x00" in name:
        raise UnknownModel(
            "a model is named by a version (python -m producer models list) or an alias such as production"
        )


def unknown(name: str) -> UnknownModel:
    """The error for a well-formed name that stands for no version now."""
    if name == PRODUCTION:
        return UnknownModel(
            "no model is aliased production yet: run python -m producer init-db, or models alias production VERSION"
        )
    return UnknownModel(f"there is no model version or alias {name!r} (see: python -m producer models list)")


def resolve_job_models(conn: Connection, model: str | None, shadow: str | None) -> tuple[str, str | None]:
    """(version, shadow version) for a new job: ``model`` defaults to production; no shadow unless asked."""
    version = resolve(conn, model or PRODUCTION)
    return version, resolve_shadow(conn, version, shadow)


def resolve_shadow(conn: Connection, version: str, shadow: str | None) -> str | None:
    """The version shadowing a job served by ``version``: another one, or None when none is asked for."""
    if not shadow:
        return None
    shadow_version = resolve(conn, shadow)
    if shadow_version == version:
        raise UnknownModel(f"the shadow must be another version than the job's own ({version})")
    return shadow_version


def check_alias(alias: str) -> None:
    if not ALIAS_PATTERN.fullmatch(alias) or VERSION_LIKE.fullmatch(alias):
        raise ValueError(
            f"alias {alias[:60]!r} is not allowed: 1 to 40 lower-case letters, digits, - and _, starting with a letter,"
            " and not ending like a version id (-<12 hex digits>)"
        )


def move_alias(conn: Connection, alias: str, name: str) -> tuple[str | None, str]:
    """Point ``alias`` at the version ``name`` resolves to; returns (the version it named before, the new one)."""
    check_alias(alias)
    version = resolve(conn, name)
    return store.set_alias(conn, alias, version), version


def remove_alias(conn: Connection, alias: str) -> str:
    """Remove an alias other than production (jobs must always have a default); returns the version it named."""
    if alias == PRODUCTION:
        raise ValueError("production cannot be removed, only moved: models alias production VERSION")
    version = store.remove_alias(conn, alias)
    if version is None:
        raise UnknownModel(f"there is no alias {alias!r}")
    return version


def describe(conn: Connection, name: str) -> dict[str, Any]:
    """A version (by version or alias) as the pages and ``models show`` present it: its card, aliases, files,
    what it serves."""
    found = store.describe_model(conn, resolve(conn, name))
    assert found is not None  # resolve found it
    return with_serving(found)


def describe_optional(conn: Connection, version: str | None) -> dict[str, Any] | None:
    """``describe`` of a job's recorded version, or None when it is not (or no longer) in the registry."""
    found = store.describe_model(conn, version) if version else None
    return with_serving(found) if found else None


def list_versions(conn: Connection) -> list[dict[str, Any]]:
    return [with_serving(row) for row in store.list_models(conn)]


def with_serving(row: dict[str, Any]) -> dict[str, Any]:
    """The row with ``serves``: the file a worker with the default MODEL_PRECISION runs."""
    return {**row, "serves": serving_variant(row["card"], row["int8_size"] is not None)}


def serving_variant(card: dict[str, Any], has_int8: bool, precision: str = "auto") -> str:
    """``int8`` or ``float``: which LiteRT file to run.

    ``auto`` (the default) serves the full-integer file when the card shows its test accuracy
    within 0.05 points of the float model's: a smaller, faster model for no accuracy that
    matters. A card without int8 figures (older ones) serves float; ``float`` and ``int8``
    force one (``int8`` only where the version has that file).
    """
    if precision not in MODEL_PRECISIONS:
        raise ValueError(f"MODEL_PRECISION must be one of {', '.join(MODEL_PRECISIONS)}, got {precision!r}")
    if not has_int8 or precision == "float":
        return "float"
    if precision == "int8":
        return "int8"
    float_accuracy = card.get("test_accuracy")
    int8_figures = card.get("int8")
    int8_accuracy = int8_figures.get("test_accuracy") if isinstance(int8_figures, dict) else None
    if not isinstance(float_accuracy, int | float) or not isinstance(int8_accuracy, int | float):
        return "float"
    return "int8" if float_accuracy - int8_accuracy <= INT8_MAX_ACCURACY_DROP + 1e-12 else "float"
