#!/bin/sh
# Creates the mnist-queue database roles (see mnist-roles.psql beside this file).
# The postgres image runs it once, when it initialises an empty data directory, if this folder is
# mounted at /docker-entrypoint-initdb.d. It can also be run by hand against any server:
#   PGHOST=... POSTGRES_USER=postgres POSTGRES_DB=mnist MNIST_OWNER_PASSWORD=... MNIST_APP_PASSWORD=... \
#   MNIST_WEB_PASSWORD=... MNIST_WORKER_PASSWORD=... ./10-mnist-roles.sh
set -eu
: "${MNIST_OWNER_PASSWORD:?set MNIST_OWNER_PASSWORD: the password of the role that runs init-db}"
: "${MNIST_APP_PASSWORD:?set MNIST_APP_PASSWORD: the password of the role the operators' tools use}"
: "${MNIST_WEB_PASSWORD:?set MNIST_WEB_PASSWORD: the password of the role the web service uses}"
: "${MNIST_WORKER_PASSWORD:?set MNIST_WORKER_PASSWORD: the password of the role the workers use}"
psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet \
  --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-${POSTGRES_USER:-postgres}}" \
  -v owner_role="${MNIST_OWNER_ROLE:-mnist_owner}" -v app_role="${MNIST_APP_ROLE:-mnist_app}" \
  -v web_role="${MNIST_WEB_ROLE:-mnist_web}" -v worker_role="${MNIST_WORKER_ROLE:-mnist_worker}" \
  -v owner_password="$MNIST_OWNER_PASSWORD" -v app_password="$MNIST_APP_PASSWORD" \
  -v web_password="$MNIST_WEB_PASSWORD" -v worker_password="$MNIST_WORKER_PASSWORD" \
  -f "$(dirname "$0")/mnist-roles.psql"
