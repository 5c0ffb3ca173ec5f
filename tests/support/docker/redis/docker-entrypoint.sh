#!/bin/sh
# The official redis image's start-up, in short: options alone mean redis-server; as root, hand
# /data to the redis user and drop to it. Protected mode is off (the official image builds Redis
# so), since other containers connect over the network without a password; options given later win.
set -eu

case "${1:-}" in
  -*) set -- redis-server "$@" ;;
esac

if [ "${1:-}" = redis-server ]; then
  if [ "$(id -u)" = 0 ]; then
    find . \! -user redis -exec chown redis:redis '{}' +
    exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
  fi
  shift
  case "${1:-}" in
    ""|-*) exec redis-server --protected-mode no "$@" ;;
    # A configuration file must come first.
    *) config="$1"; shift; exec redis-server "$config" --protected-mode no "$@" ;;
  esac
fi
exec "$@"
