"""Operators: who may sign in to the bulk and insight pages, their password hashes and API tokens."""

from shared.operators import secrets, store

__all__ = ["secrets", "store"]
