#!/bin/sh
# The worker image's entrypoint: apply the schema, then run the container's command (the worker,
# or a producer command). init-db connects as SCHEMA_DATABASE_URL's role (the table owner) when it
# is set, else as DATABASE_URL's. Safe with any number of replicas starting together: migrations
# already applied are skipped, and pending ones run under an advisory lock in PostgreSQL.
set -eu
python -m producer init-db
# The owner's credentials are for init-db only: the command (which decodes uploaded images) runs
# with DATABASE_URL's role and cannot drop or alter the tables.
unset SCHEMA_DATABASE_URL
exec "$@"
