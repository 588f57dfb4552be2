#!/usr/bin/env bash
# End-to-end benchmark (issue 8): a release engine on a fresh database, then the simulator
# with N connected workers sending a location every 4 s, at each offered request rate.
# Prints one JSON summary per rate (the simulator's --json output, with its cross-check).
#
#   scripts/bench-e2e.sh [workers=10000] [duration=30s] [rates="100 1000"]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
workers="${1:-10000}"
duration="${2:-30s}"
rates="${3:-100 1000}"
eval "$(scripts/dev-env.sh)"
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release --bin arreglame >&2
bin=target/release/arreglame
admin="${DATABASE_URL%/*}/postgres"
for rate in $rates; do
  db="bench_e2e"
  psql "$admin" -qc "drop database if exists $db" >/dev/null 2>&1
  psql "$admin" -qc "create database $db" >/dev/null
  export DATABASE_URL="${DATABASE_URL%/*}/$db" PORT=3911 HOST=127.0.0.1 LOG_LEVEL=warn DATABASE_MAX_CONNECTIONS=40
  "$bin" migrate >/dev/null && "$bin" seed >/dev/null
  "$bin" serve >"target/bench-e2e-serve-$rate.log" 2>&1 &
  server=$!
  for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break; sleep 0.1; done
  echo "== rate $rate/s, $workers workers, $duration" >&2
  "$bin" simulate --url "http://127.0.0.1:$PORT" --workers "$workers" --customers 200 \
    --duration "$duration" --rate "$rate" --accept-rate 0.8 --cancel-rate 0 --job-seconds 5 \
    --location-every 4 --drain-seconds 30 --json --check || true
  kill "$server"; wait "$server" 2>/dev/null || true
done
