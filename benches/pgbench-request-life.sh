#!/usr/bin/env bash
# The fixed baseline of issue 13: pgbench replaying one service request's whole life as the
# engine at adb545c sent it (benches/pgbench/request_life_adb545c.sql), on the database
# DATABASE_URL names (migrated and seeded by the engine), with C clients for S seconds.
# Prints one JSON object: requests per second, the pgbench client's own CPU seconds, and
# the cross-check (every request pgbench counted is COMPLETED, with its five outbox rows).
#
#   benches/pgbench-request-life.sh [clients=32] [seconds=10]
#
# `scripts/bench-e2e.sh` runs it beside the engine, on the same cluster, in the same run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
clients="${1:-32}"
seconds="${2:-10}"
url="${DATABASE_URL:?DATABASE_URL names the database to replay on}"
pgbench="${PGBENCH:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)/pgbench}"
[ -x "$pgbench" ] || pgbench="$(command -v pgbench)"
customer=00000000-0000-4000-8000-000000000c01 # seeds/04_demo_people.sql
prefix="pgbench-life-$$-"
cores="$(nproc)"
threads=$(( clients < cores ? clients : cores ))

# One worker per client, each able to hold its one pending offer.
psql "$url" -qAt -c "insert into worker_profiles (name, \"cityId\", skills, rating)
  select '$prefix' || (n - 1), 'buenos-aires', '{lawn_mowing}', 4.5 from generate_series(1, $clients) n" >/dev/null
before="$(psql "$url" -At -c "select count(*) from service_requests where status = 'COMPLETED'")"
psql "$url" -q -c "vacuum analyze" -c "checkpoint" >/dev/null
out="$(mktemp)"
# bash's `time` (user and system seconds of pgbench and its threads), no extra package.
TIMEFORMAT='%U %S'
{ time "$pgbench" -n -M prepared -c "$clients" -j "$threads" -T "$seconds" \
    -D customer="$customer" -D prefix="$prefix" -D ready=0 \
    -f benches/pgbench/request_life_adb545c.sql "$url" >"$out" 2>"$out.err"; } 2>"$out.cpu" || {
  cat "$out.err" >&2; exit 1; }
tps="$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p' "$out")"
done_count="$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out")"
failed="$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$out")"
after="$(psql "$url" -At -c "select count(*) from service_requests where status = 'COMPLETED'")"
unrelayed="$(psql "$url" -At -c "select count(*) from outbox_events where processed = false")"
read -r user sys <"$out.cpu"
completed=$(( after - before ))
check=ok
[ "$completed" = "$done_count" ] || check="pgbench counted $done_count requests, $completed completed"
rm -f "$out" "$out.err" "$out.cpu"
printf '{"baseline":"pgbench replay of the per-request SQL at adb545c","clients":%s,"seconds":%s,"requests_per_second":%s,"requests":%s,"failed":%s,"unrelayed_outbox_rows":%s,"pgbench_cpu_seconds":%.2f,"check":"%s"}\n' \
  "$clients" "$seconds" "$tps" "$done_count" "${failed:-0}" "$unrelayed" "$(awk -v u="$user" -v s="$sys" 'BEGIN {print u + s}')" "$check"
