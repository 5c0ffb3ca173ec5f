#!/bin/sh
# Apply the schema, then run the container's command (celery worker, gunicorn, or a producer
# command). Safe with any number of replicas starting together: create_schema is idempotent
# and serialised by an advisory lock in PostgreSQL.
set -eu
python -m producer init-db
exec "$@"
