#!/usr/bin/env bash
# SQL statements per created request over its whole life (create, offer, accept, start,
# complete, and the relay publishing its events), counted by pg_stat_statements on a
# durable PostgreSQL (fsync and synchronous_commit on) that this script starts itself.
#
#   scripts/statements-per-request.sh [ARREGLAME_BIN]     (default target/debug/arreglame)
#
# It starts the durable cluster of scripts/pg-durable.sh (target/pg-durable, port 55433),
# migrates and seeds a fresh database, starts `serve` on it, resets the
# statistics, runs the simulator (every offer accepted, no cancellations, every job
# completed), waits for the relay to catch up, and prints one JSON object: requests
# created and completed, statements (top-level calls, pings included) per created
# request, transactions per created request, and the busiest statements.
#
# Left out of `statements_per_created_request`, by text: the simulator's own provisioning
# and its read-back of every request's status (`myServiceRequests`), and the workers'
# presence (going online: their jobs in hand, record, pending offer, profile, last activity;
# a session's resume), which is each worker's once per connection, not any request's.
# `presence_statements_per_worker` and `all_statements_per_created_request` (everything but
# the provisioning, divided by the requests) say what they cost. Every statement is listed
# in target/statements-all.txt.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin="${1:-target/debug/arreglame}"
[ -x "$bin" ] || { echo "statements-per-request: $bin not found (cargo build first)" >&2; exit 2; }
server="$(PG_DURABLE_PORT="${STATEMENTS_PG_PORT:-55433}" scripts/pg-durable.sh)"
db="statements_$$"
psql "$server/postgres" -qc "create database $db" >/dev/null
trap 'kill "${engine:-}" 2>/dev/null || true; wait 2>/dev/null || true; psql "$server/postgres" -qc "drop database if exists $db with (force)" >/dev/null 2>&1 || true' EXIT
url="$server/$db"
psql "$url" -qc "create extension if not exists pg_stat_statements" >/dev/null
export DATABASE_URL="$url" JWT_SECRET="${JWT_SECRET:-dev-secret-change-me}" LOG_LEVEL=warn
unset NATS_URL
"$bin" migrate >/dev/null
"$bin" seed >/dev/null
web_port=$((20000 + $$ % 20000))
PORT="$web_port" "$bin" serve >"target/statements-engine.log" 2>&1 &
engine=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$web_port/health" >/dev/null && break; sleep 0.2; done
requests="${STATEMENTS_REQUESTS_PER_SECOND:-5}"
seconds="${STATEMENTS_SECONDS:-20}"
workers="${STATEMENTS_WORKERS:-30}"
# Workers connect and go online before the reset: their statements are not per request.
psql "$url" -qc "select pg_stat_statements_reset()" >/dev/null
xacts_before="$(psql "$url" -Atc "select xact_commit + xact_rollback from pg_stat_database where datname = current_database()")"
"$bin" simulate --url "http://127.0.0.1:$web_port" --workers "$workers" --customers 5 --rate "$requests" \
  --duration "${seconds}s" --accept-rate 1 --cancel-rate 0 --job-seconds 1 --drain-seconds 10 --json \
  >target/statements-sim.json
sleep 3 # the relay's last batch
# Every statement, for a closer look.
psql "$url" -At -c "select calls, left(regexp_replace(query, '\s+', ' ', 'g'), 160) from pg_stat_statements
  where dbid = (select oid from pg_database where datname = current_database()) order by calls desc" \
  >target/statements-all.txt
psql "$url" -At <<SQL
with everything as (
  -- Matched on the text with its whitespace folded: a statement written over several lines
  -- (update worker_profiles\n set ...) would otherwise escape its pattern and be counted
  -- against the requests.
  select query, calls,
         regexp_replace(query, '\s+', ' ', 'g') ~* 'where "assignedWorkerId" = [^ ]+ and status in|select w.rating::float8|select o.id as "offerId"|select id, "isActive", skills from worker_profiles|select "requestId" from offers where "workerId"|update worker_profiles set "cityId"' as presence,
         regexp_replace(query, '\s+', ' ', 'g') ~* 'from service_requests where "customerId" = [^ ]+ and' as read_back
  from pg_stat_statements
  where dbid = (select oid from pg_database where datname = current_database())
    and query !~* 'pg_stat_statements|insert into (worker_profiles|customers)|from pg_database|from cities where id'
), engine as (select query, calls from everything where not presence and not read_back),
   workers as (select $workers as n),
   created as (select count(*) as n from service_requests),
   completed as (select count(*) as n from service_requests where status = 'COMPLETED'),
   xacts as (select xact_commit + xact_rollback - $xacts_before as n from pg_stat_database where datname = current_database())
select json_build_object(
  'created', (select n from created),
  'completed', (select n from completed),
  'statements_per_created_request', round((select sum(calls) from engine) / nullif((select n from created), 0), 2),
  'all_statements_per_created_request', round((select sum(calls) from everything) / nullif((select n from created), 0), 2),
  'presence_statements_per_worker', round((select sum(calls) from everything where presence) / nullif((select n from workers), 0), 2),
  'transactions_per_created_request', round((select n from xacts)::numeric / nullif((select n from created), 0), 2),
  'busiest', (select json_agg(json_build_object('calls', calls, 'query', left(regexp_replace(query, '\s+', ' ', 'g'), 90)) order by calls desc)
              from (select * from engine order by calls desc limit 12) t))
SQL
