#!/bin/sh
# coatcheck container entrypoint.
#
#   (no arguments) | serve [FLAGS]   start the gateway: `coatcheck serve --init --json`; the
#                                    first start initializes the home (or, with COATCHECK_CONFIG,
#                                    the store), later starts reuse it
#   healthcheck                      exit 0 when this container's gateway answers /readyz
#   relay ...                        `coatcheck relay ...` (the relay side near the targets)
#   coatcheck COMMAND ...            any CLI command (`docker compose exec gateway coatcheck agent list`
#                                    works too: the image has `coatcheck` on PATH)
#   anything else (sh, node, ...)    run as given
#
# Configuration comes from the environment (docs/deploy.md): COATCHECK_HOME (a volume),
# COATCHECK_CONFIG (a read-only config file), COATCHECK_MASTER_KEY or
# COATCHECK_MASTER_KEY_FILE, COATCHECK_ADMIN_KEY, COATCHECK_DATABASE_URL, COATCHECK_LISTEN_*,
# COATCHECK_LOG_LEVEL. Nothing is written outside COATCHECK_HOME and TMPDIR (default /tmp).
set -eu

# Files this process creates (keys, store, recordings) are its own only.
umask 077

: "${COATCHECK_HOME:=/var/lib/coatcheck}"
export COATCHECK_HOME
COATCHECK_CLI=${COATCHECK_CLI:-coatcheck}
HERE=$(dirname "$0")

fail() {
  printf '{"level":50,"service":"coatcheck","msg":"%s"}\n' "$1" >&2
  exit 64
}

# A server.json left by a container that was killed names a pid of its own PID namespace;
# in this one that pid may belong to another process (tini, this script), which would
# refuse the start forever. Keep the file only while that pid is a coatcheck serve.
clear_stale_server_file() {
  file="$COATCHECK_HOME/server.json"
  [ -f "$file" ] || return 0
  pid=$(sed -n 's/^{"pid":\([0-9][0-9]*\)[,}].*/\1/p' "$file" | head -n 1)
  if [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] &&
    tr '\000' ' ' <"/proc/$pid/cmdline" | grep -q ' serve'; then
    return 0
  fi
  rm -f "$file"
}

serve() {
  if [ ! -d "$COATCHECK_HOME" ]; then
    mkdir -p "$COATCHECK_HOME" 2>/dev/null || fail "COATCHECK_HOME $COATCHECK_HOME does not exist and cannot be created by uid $(id -u): mount a volume there"
  fi
  if [ ! -w "$COATCHECK_HOME" ]; then
    fail "COATCHECK_HOME $COATCHECK_HOME is not writable by uid $(id -u): mount a volume there owned by this user (or set fsGroup)"
  fi
  tmp=${TMPDIR:-/tmp}
  if [ ! -w "$tmp" ]; then
    fail "TMPDIR $tmp is not writable: mount a tmpfs there (the root filesystem may be read-only)"
  fi
  clear_stale_server_file
  init=--init
  if [ "${COATCHECK_INIT:-true}" = false ]; then init=; fi
  # shellcheck disable=SC2086 # $init is one flag or nothing
  exec $COATCHECK_CLI serve $init --json "$@"
}

if [ "$#" -eq 0 ]; then
  serve
fi

case "$1" in
serve)
  shift
  serve "$@"
  ;;
healthcheck)
  shift
  exec node "$HERE/healthcheck.mjs" "$@"
  ;;
relay | -*)
  exec $COATCHECK_CLI "$@"
  ;;
coatcheck)
  shift
  exec $COATCHECK_CLI "$@"
  ;;
*)
  exec "$@"
  ;;
esac
