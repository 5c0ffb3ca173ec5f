"""The model registry from the command line: ``models`` of the producer's CLI.

python -m producer models list
python -m producer models register models/mnist_cnn.keras [--name NAME]   # checks the files, then stores them
python -m producer models alias production mnist_cnn-1a2b3c4d5e6f        # new jobs use it from now on
python -m producer models alias canary production                        # an alias may name what another names
python -m producer models unalias canary
python -m producer models show production                                # or a version
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from producer.errors import user_errors
from shared.config import Settings
from shared.db import connection
from shared.models import registry
from shared.training import registration


def open_database(config: Settings) -> connection.Connection:
    return connection.connect(config.database_url)


def accuracy(value: Any) -> str:
    return f"{value * 100:.2f} %" if isinstance(value, int | float) else "-"


def kilobytes(size: int | None) -> str:
    return f"{size / 1024:.0f} KB" if size is not None else "-"


def registration_line(outcome: registration.Registration | None, model_path: Path) -> str:
    """What init-db says of the bundled model."""
    if outcome is None:
        return f"no model file at {model_path}: none registered (python -m producer models register FILE)"
    done = "registered" if outcome.stored else "already registered"
    return f"bundled model {outcome.version} {done}" + (", aliased production" if outcome.aliased_production else "")


@click.group()
def models() -> None:
    """Registered model versions and their aliases (production serves new jobs by default)."""


@models.command("list")
@click.pass_obj
@user_errors
def list_models(config: Settings) -> None:
    """Every version, newest first: aliases, accuracy of the float and int8 files, which one workers serve."""
    rows = registry.list_versions(open_database(config))
    if not rows:
        click.echo("no model is registered (python -m producer init-db registers the bundled one)")
        return
    click.echo(f"{'version':<28} {'aliases':<22} {'float':>8} {'int8':>8} {'serves':<6} registered")
    for row in rows:
        card = row["card"]
        int8 = card.get("int8") if isinstance(card.get("int8"), dict) else {}
        aliases = ",".join(row["aliases"]) or "-"
        click.echo(
            f"{row['version']:<28} {aliases:<22} {accuracy(card.get('test_accuracy')):>8}"
            f" {accuracy(int8.get('test_accuracy')):>8}"
            f" {row['serves']:<6} {row['created_at']:%Y-%m-%d %H:%M}"
        )


@models.command("register")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--name", help="A name for the model [default: the file's stem].")
@click.pass_obj
@user_errors
def register(config: Settings, path: Path, name: str | None) -> None:
    """Check a trained model (PATH: its .keras file, with its .tflite exports and card beside it) and store it."""
    outcome = registration.register(open_database(config), path, config.mnist_dir, name)
    for check in outcome.checks:
        click.echo(f"checked: {check}")
    state = "registered" if outcome.stored else "was registered already"
    click.echo(
        f"{outcome.version} {state}; serve it with: python -m producer models alias production {outcome.version}"
    )


@models.command("alias")
@click.argument("alias")
@click.argument("version")
@click.pass_obj
@user_errors
def alias(config: Settings, alias: str, version: str) -> None:
    """Point ALIAS at VERSION (a version, or another alias); jobs submitted from now on that name ALIAS use it."""
    before, after = registry.move_alias(open_database(config), alias, version)
    click.echo(f"{alias} -> {after}" + (f" (was {before})" if before and before != after else ""))


@models.command("unalias")
@click.argument("alias")
@click.pass_obj
@user_errors
def unalias(config: Settings, alias: str) -> None:
    """Remove ALIAS (production can only be moved)."""
    version = registry.remove_alias(open_database(config), alias)
    click.echo(f"{alias} removed (it named {version})")


@models.command("show")
@click.argument("version")
@click.pass_obj
@user_errors
def show(config: Settings, version: str) -> None:
    """One version (or the version an alias names): its aliases, files, what workers serve, and its model card."""
    row = registry.describe(open_database(config), version)
    click.echo(f"version:    {row['version']}")
    click.echo(f"name:       {row['name']}")
    click.echo(f"aliases:    {', '.join(row['aliases']) or '-'}")
    click.echo(f"registered: {row['created_at']:%Y-%m-%d %H:%M:%S %Z}")
    click.echo(f"serves:     {row['serves']} LiteRT (MODEL_PRECISION=auto)")
    for label, file, size in (
        ("keras", row["keras_file"], row["keras_size"]),
        ("float", row["tflite_file"], row["tflite_size"]),
        ("int8", row["int8_file"], row["int8_size"]),
    ):
        if file:
            click.echo(f"{label + ':':<11} {file} ({kilobytes(size)})")
    click.echo("card:")
    click.echo(json.dumps(row["card"], indent=2, sort_keys=True))
