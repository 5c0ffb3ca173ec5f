"""Operators' secrets: argon2id password hashes and API bearer tokens; what the CLI and the web share.

Passwords are hashed with argon2id (argon2-cffi's defaults, RFC 9106's second recommended
profile: 64 MiB, 3 passes, 4 lanes), so a stolen table costs an attacker that much memory per guess.
API tokens are 256 random bits: only their SHA-256 is stored (a fast hash is enough for a value
that cannot be guessed), and a token is found by that hash on a UNIQUE column, never compared
character by character in Python.

A password is set only through ``check_password``, the one password policy: a length, and zxcvbn's
estimate of how guessable it is (repeats, keyboard rows, common passwords and words, the operator's name).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
import secrets

import argon2
import argon2.exceptions

from shared.db.connection import Connection
from shared.operators import store

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,99}")
MIN_PASSWORD_CHARS = 12
MAX_PASSWORD_CHARS = 1024  # argon2 takes any length; this bounds what a sign-in form makes the server hash
# zxcvbn's score, 0-4; 3 is its "safely unguessable: moderate protection from an offline slow-hash scenario".
MIN_PASSWORD_SCORE = 3
# zxcvbn refuses longer input (its matching slows with length); the first 72 characters are estimated.
ESTIMATED_PASSWORD_CHARS = 72
TOKEN_PREFIX = "mnq_"  # so that a leaked token is recognisable (secret scanners, logs)
TOKEN_BYTES = 32

_hasher = argon2.PasswordHasher()


@functools.cache
def _unknown_operator_hash() -> str:
    """Verified when the name is unknown, so a wrong name costs as long as a wrong password."""
    return _hasher.hash(secrets.token_urlsafe(16))


@dataclasses.dataclass(frozen=True)
class Operator:
    id: int
    name: str
    # A short digest of the current password hash: a session made before a password change ends with it.
    credential_tag: str


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError("an operator name is 1-100 letters, digits or . _ @ -, starting with a letter or digit")
    return name


def check_password(password: str, name: str) -> str:
    """The password policy, wherever a password is set: ValueError with what to change, else ``password``.

    At least MIN_PASSWORD_CHARS characters, and a zxcvbn score of at least MIN_PASSWORD_SCORE with
    the operator's name (and its parts) counted as words an attacker tries first.
    """
    if len(password) < MIN_PASSWORD_CHARS:
        raise ValueError(f"the password must have at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise ValueError(f"the password may have at most {MAX_PASSWORD_CHARS} characters")
    # Imported here: the web checks passwords but never sets one, and its image does not install zxcvbn.
    import zxcvbn

    name_words = [name, *re.split(r"[._@-]+", name)]
    estimate = zxcvbn.zxcvbn(password[:ESTIMATED_PASSWORD_CHARS], user_inputs=name_words)
    if estimate["score"] < MIN_PASSWORD_SCORE:
        feedback = estimate["feedback"]
        advice = " ".join(part for part in (feedback["warning"], *feedback["suggestions"]) if part)
        raise ValueError(
            f"the password is too easy to guess (strength {estimate['score']} of 4, at least"
            f" {MIN_PASSWORD_SCORE} needed){': ' + advice if advice else ''}"
        )
    return password


def hash_password(password: str, name: str) -> str:
    return _hasher.hash(check_password(password, name))


def credential_tag(password_hash: str, session_generation: int = 0) -> str:
    """What a session must name: changes with the password and at every sign-out."""
    return hashlib.sha256(f"{session_generation}:{password_hash}".encode()).hexdigest()[:16]


def _operator(row: dict) -> Operator:
    return Operator(row["id"], row["name"], credential_tag(row["password_hash"], row.get("session_generation", 0)))


def add_operator(conn: Connection, name: str, password: str) -> int:
    """Create an operator; ValueError for a bad name or password, OperatorExists for a name in use."""
    return store.create_operator(conn, check_name(name), hash_password(password, name))


def change_password(conn: Connection, name: str, password: str) -> None:
    row = store.operator_by_name(conn, name)
    if row is None:
        raise ValueError(f"there is no operator named {name!r}")
    store.set_password_hash(conn, row["id"], hash_password(password, name))


def authenticate(conn: Connection, name: str, password: str, rehash: bool = True) -> Operator | None:
    """The operator if ``name`` and ``password`` match, else None, in about the same time either way.

    A hash made with weaker parameters than today's is replaced on success, unless ``rehash`` is
    False (the web, whose database role may not write passwords: the next CLI sign-in does it).
    """
    row = store.operator_by_name(conn, name) if len(name) <= 100 else None
    if len(password) > MAX_PASSWORD_CHARS:
        return None
    try:
        _hasher.verify(row["password_hash"] if row else _unknown_operator_hash(), password)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return None
    if row is None:
        return None
    if rehash and _hasher.check_needs_rehash(row["password_hash"]):
        row = {**row, "password_hash": _hasher.hash(password)}
        store.set_password_hash(conn, row["id"], row["password_hash"])
    return _operator(row)


def operator_for_session(conn: Connection, operator_id: int, tag: str) -> Operator | None:
    """The signed-in operator of a session, or None once they were removed or their password changed."""
    row = store.operator_by_id(conn, operator_id)
    if row is None:
        return None
    operator = _operator(row)
    return operator if secrets.compare_digest(operator.credential_tag, tag) else None


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def create_token(conn: Connection, name: str, label: str | None) -> tuple[int, str]:
    """A new API token for operator ``name``: (its id, the token), which is shown once and not stored."""
    row = store.operator_by_name(conn, name)
    if row is None:
        raise ValueError(f"there is no operator named {name!r} (add one with: python -m producer users add {name})")
    token = new_token()
    return store.create_token(conn, row["id"], token_hash(token), label), token


def operator_for_token(conn: Connection, token: str) -> Operator | None:
    """The operator holding this unrevoked token, or None."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    row = store.token_operator(conn, token_hash(token))
    return _operator(row) if row else None
