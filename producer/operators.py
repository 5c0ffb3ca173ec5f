"""Who may use the operator pages and the jobs API: ``users`` and ``tokens`` of the producer's CLI.

python -m producer users add alice              # asks for the password twice
printf '%s\\n' "$PASSWORD" | python -m producer users add alice --password-stdin
python -m producer users list | passwd NAME | remove NAME
python -m producer tokens create alice --label ci   # prints the token once
python -m producer tokens list [--operator NAME]
python -m producer tokens revoke 3
"""

from __future__ import annotations

import sys

import click

from producer.errors import user_errors
from shared import operators
from shared.config import Settings
from shared.db import connection

TOKEN_ID = click.IntRange(1, 2**63 - 1)


def read_password(from_stdin: bool, name: str) -> str:
    """From a prompt, typed twice and not echoed; or the first line of standard input. Checked by the policy."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("password", hide_input=True, confirmation_prompt=True)
    return operators.secrets.check_password(password, name)


def open_database(config: Settings) -> connection.Connection:
    return connection.connect(config.database_url)


def when(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


password_stdin = click.option(
    "--password-stdin", is_flag=True, help="Read the password from the first line of standard input."
)


@click.group()
def users() -> None:
    """Operators: who may sign in to the jobs, mistakes and browse pages."""


@users.command("add")
@click.argument("name")
@password_stdin
@click.pass_obj
@user_errors
def add_user(config: Settings, name: str, password_stdin: bool) -> None:
    """Add an operator; the password is asked for (12 characters or more, hard to guess: docs/security.md)."""
    operators.secrets.check_name(name)
    operators.secrets.add_operator(open_database(config), name, read_password(password_stdin, name))
    click.echo(f"operator {name} added")


@users.command("passwd")
@click.argument("name")
@password_stdin
@click.pass_obj
@user_errors
def change_password(config: Settings, name: str, password_stdin: bool) -> None:
    """Set an operator's password; their open sessions end."""
    operators.secrets.change_password(open_database(config), name, read_password(password_stdin, name))
    click.echo(f"password of {name} changed")


@users.command("remove")
@click.argument("name")
@click.pass_obj
@user_errors
def remove_user(config: Settings, name: str) -> None:
    """Remove an operator with their tokens; their sessions end."""
    if not operators.store.delete_operator(open_database(config), name):
        raise click.ClickException(f"there is no operator named {name!r}")
    click.echo(f"operator {name} removed, with their tokens")


@users.command("list")
@click.pass_obj
@user_errors
def list_users(config: Settings) -> None:
    """Every operator with their number of active tokens."""
    for row in operators.store.list_operators(open_database(config)):
        click.echo(f"{row['name']}  added {when(row['created_at'])}  {row['active_tokens']} active token(s)")


@click.group()
def tokens() -> None:
    """API tokens: how programs call POST /api/jobs and GET /api/jobs/<id> (Authorization: Bearer ...)."""


@tokens.command("create")
@click.argument("name")
@click.option("--label", help="What the token is for, shown by tokens list.")
@click.pass_obj
@user_errors
def create_token(config: Settings, name: str, label: str | None) -> None:
    """Create a token for operator NAME and print it once: it is stored only as a hash."""
    token_id, token = operators.secrets.create_token(open_database(config), name, label)
    click.echo(f"token {token_id} for {name}; keep it now, it cannot be shown again:", err=True)
    click.echo(token)


@tokens.command("list")
@click.option("--operator", "name", help="Only this operator's tokens.")
@click.pass_obj
@user_errors
def list_tokens(config: Settings, name: str | None) -> None:
    """Every token's id, operator, label, and when it was created, last used and revoked."""
    for row in operators.store.list_tokens(open_database(config), name):
        state = f"revoked {when(row['revoked_at'])}" if row["revoked_at"] else "active"
        click.echo(
            f"{row['id']}  {row['operator']}  {row['label'] or '-'}  created {when(row['created_at'])}"
            f"  last used {when(row['last_used_at'])}  {state}"
        )


@tokens.command("revoke")
@click.argument("token_id", type=TOKEN_ID)
@click.pass_obj
@user_errors
def revoke_token(config: Settings, token_id: int) -> None:
    """Revoke token TOKEN_ID (from tokens list); it stops working at once."""
    if not operators.store.revoke_token(open_database(config), token_id):
        raise click.ClickException(f"there is no active token {token_id}")
    click.echo(f"token {token_id} revoked")
