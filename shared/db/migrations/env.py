"""Alembic's entry: run the migrations on the connection ``shared.db.schema.migrate`` hands over.

``migrate`` opens the connection, takes the schema's advisory lock in its transaction and
passes it in ``config.attributes``, so every migration runs inside that one transaction.
"""

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "run migrations with python -m producer init-db (shared.db.schema.migrate), not the alembic command"
    )
context.configure(connection=connection, transactional_ddl=True)
with context.begin_transaction():
    context.run_migrations()
