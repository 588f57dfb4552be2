#!/usr/bin/env bash
# Prepares everything the engine and its tests need on this machine and prints the
# environment to use, as `export` lines (eval it, or source scripts/env.sh).
#
#   - PostgreSQL: the server at $DATABASE_URL when one answers; otherwise a project-local
#     cluster under target/dev-env/pg (installed from the distribution when missing,
#     run as the `postgres` user when we are root, because initdb refuses root).
#   - NATS with JetStream: the server at $NATS_URL when one answers; otherwise Debian's
#     nats-server, started on a project-local port with its store under target/dev-env.
#
# Idempotent: a second run finds both servers up and only prints the environment.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
state="${ARREGLAME_DEV_DIR:-$root/target/dev-env}"
pg_port="${ARREGLAME_PG_PORT:-55432}"
nats_port="${ARREGLAME_NATS_PORT:-54222}"
log() { echo "[dev-env] $*" >&2; }

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    apt_updated=1
  fi
  log "apt-get install $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

pg_answers() { pg_isready -q -d "$1" >/dev/null 2>&1 && psql "$1" -Atqc 'select 1' >/dev/null 2>&1; }

pg_bindir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  return 1
}

ensure_postgres() {
  if [ -n "${DATABASE_URL:-}" ] && command -v pg_isready >/dev/null && pg_answers "$DATABASE_URL"; then
    log "using the PostgreSQL at DATABASE_URL"
    echo "export DATABASE_URL='$DATABASE_URL'"
    return
  fi
  local url="postgres://postgres@127.0.0.1:$pg_port/arreglame"
  if ! pg_bindir >/dev/null || ! command -v psql >/dev/null; then
    apt_install postgresql postgresql-client
  fi
  local bin; bin="$(pg_bindir)"
  local data="$state/pg"
  local run_as=()
  if [ "$(id -u)" -eq 0 ]; then run_as=(runuser -u postgres --); fi

  if ! "$bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port"; then
    mkdir -p "$state"
    if [ ! -f "$data/PG_VERSION" ]; then
      log "initdb $data"
      mkdir -p "$data"
      [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$data"
      "${run_as[@]}" "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
      # Tuned for a test box: durability is not the point of this cluster, speed is.
      cat >>"$data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$data'
max_connections = 400
shared_buffers = 256MB
fsync = off
synchronous_commit = off
full_page_writes = off
CONF
    fi
    log "starting PostgreSQL on 127.0.0.1:$pg_port"
    "${run_as[@]}" "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 start >/dev/null
  fi
  psql "postgres://postgres@127.0.0.1:$pg_port/postgres" -Atqc \
    "select 1 from pg_database where datname = 'arreglame'" | grep -q 1 ||
    psql "postgres://postgres@127.0.0.1:$pg_port/postgres" -qc 'create database arreglame' >/dev/null
  echo "export DATABASE_URL='$url'"
}

ensure_nats() {
  if [ "${ARREGLAME_SKIP_NATS:-0}" = 1 ]; then return; fi
  if [ -n "${NATS_URL:-}" ]; then
    log "using the NATS at NATS_URL"
    echo "export NATS_URL='$NATS_URL'"
    return
  fi
  command -v nats-server >/dev/null || apt_install nats-server
  local dir="$state/nats"
  mkdir -p "$dir"
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null; then
    log "starting nats-server (JetStream) on 127.0.0.1:$nats_port"
    nohup nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$dir/store" >"$dir/server.log" 2>&1 &
    echo $! >"$dir/pid"
    for _ in $(seq 1 50); do
      (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break
      sleep 0.1
    done
  fi
  echo "export NATS_URL='nats://127.0.0.1:$nats_port'"
}

ensure_postgres
ensure_nats
echo "export JWT_SECRET='${JWT_SECRET:-dev-secret-change-me}'"
