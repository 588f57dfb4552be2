#!/usr/bin/env bash
# A durable PostgreSQL for the benchmarks (issue 13): `fsync`, `synchronous_commit` and
# `full_page_writes` on, pg_stat_statements loaded (top-level statements), autovacuum every 5 s, data in
# target/pg-durable, listening on 127.0.0.1:PG_DURABLE_PORT (55433). Starts it (as the
# postgres user when run as root; initdb refuses root) unless it already answers, checks
# that it really is durable, and prints its server URL (no database name):
#
#   server="$(scripts/pg-durable.sh)"      # postgres://postgres@127.0.0.1:55433
#
# Used by scripts/bench-e2e.sh and scripts/statements-per-request.sh; the cluster stays up
# for the next run. Stop it with: su postgres -c "pg_ctl -D target/pg-durable stop".
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
port="${PG_DURABLE_PORT:-55433}"
data="$PWD/target/pg-durable"
pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
if [ -z "$pg_bin" ]; then
  # A fresh machine: the same packages scripts/dev-env.sh installs.
  eval "$(scripts/dev-env.sh)" >/dev/null
  pg_bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
fi
as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi; }
server="postgres://postgres@127.0.0.1:$port"
if ! "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$port"; then
  if [ ! -f "$data/PG_VERSION" ]; then
    mkdir -p "$data"
    [ "$(id -u)" = 0 ] && chown postgres "$data"
    as_pg "$pg_bin/initdb -D $data -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null"
  fi
  as_pg "$pg_bin/pg_ctl -D $data -l $data/server.log -w -t 60 -o '-p $port -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on -c full_page_writes=on -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=top -c max_connections=200' start >/dev/null"
fi
# Autovacuum looks for work every 5 s instead of every minute. A bench run lasts tens of
# seconds on a fresh database; with the default minute every statement of the run would
# be planned on an empty table's statistics (sequential scans cached in prepared plans
# while the tables grow), a state a production database is in only in its first minute.
# The baseline and the engine run on this same setting.
psql "$server/postgres" -qAt -c "alter system set autovacuum_naptime = '5s'" -c "select pg_reload_conf()" >/dev/null
durable="$(psql "$server/postgres" -At -c "select string_agg(name || '=' || setting, ' ' order by name) from pg_settings where name in ('fsync', 'synchronous_commit', 'full_page_writes')")"
[ "$durable" = "fsync=on full_page_writes=on synchronous_commit=on" ] || {
  echo "pg-durable: the PostgreSQL on port $port is not durable ($durable)" >&2; exit 1; }
echo "$server"
