#!/usr/bin/env bash
# End-to-end benchmark (issues 8 and 13): a release engine on a fresh database, then the
# simulator with N connected workers sending a location every 4 s, customers open-loop at
# each offered request rate (a warm-up left out). Prints, per rate, the simulator's --json
# summary (with its cross-check), then one line of CPU: seconds used by the engine, by
# PostgreSQL (the backends serving the bench database) and by the simulator, in total and
# per created request.
#
#   scripts/bench-e2e.sh [workers=10000] [duration=30s] [rates="500 1000"] [warmup=5s]
#
# BENCH_USE_RUNNING_SERVERS=1 uses the PostgreSQL at DATABASE_URL as it is instead of
# scripts/dev-env.sh's; BENCH_BIN runs that binary instead of building a release one;
# BENCH_DB and BENCH_PORT name the database (re-created) and the engine's port.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
workers="${1:-10000}"
duration="${2:-30s}"
rates="${3:-500 1000}"
warmup="${4:-5s}"
if [ "${BENCH_USE_RUNNING_SERVERS:-0}" != 1 ]; then eval "$(scripts/dev-env.sh)"; fi
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
bin="${BENCH_BIN:-target/release/arreglame}"
[ -n "${BENCH_BIN:-}" ] || cargo build --release --bin arreglame >&2
admin="${DATABASE_URL%/*}/postgres"
port="${BENCH_PORT:-3911}"
tick="$(getconf CLK_TCK)"

# Every half second: "<role> <pid> <utime+stime ticks>" for the engine, the simulator and
# each PostgreSQL backend of the bench database. CPU counters only grow, so the last sample
# of each pid is its total; sampling (not one read at the end) keeps backends that exited.
sample_cpu() {
  local out="$1" db="$2"; shift 2
  while :; do
    for spec in "$@"; do
      local role="${spec%%:*}" pid="${spec#*:}"
      [ -r "/proc/$pid/stat" ] && awk -v r="$role" -v p="$pid" '{print r, p, $14 + $15}' "/proc/$pid/stat" >>"$out" 2>/dev/null || true
    done
    ps -eo pid=,args= | awk -v db="$db" '$2 == "postgres:" && $4 == db {print $1}' | while read -r pid; do
      [ -r "/proc/$pid/stat" ] && awk -v p="$pid" '{print "postgres", p, $14 + $15}' "/proc/$pid/stat" >>"$out" 2>/dev/null || true
    done
    sleep 0.5
  done
}

for rate in $rates; do
  db="${BENCH_DB:-bench_e2e}"
  psql "$admin" -qc "drop database if exists $db" >/dev/null 2>&1
  psql "$admin" -qc "create database $db" >/dev/null
  export DATABASE_URL="${DATABASE_URL%/*}/$db" PORT="$port" HOST=127.0.0.1 LOG_LEVEL=warn DATABASE_MAX_CONNECTIONS=40
  "$bin" migrate >/dev/null && "$bin" seed >/dev/null
  "$bin" serve >"target/bench-e2e-serve-$rate.log" 2>&1 &
  server=$!
  for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break; sleep 0.1; done
  echo "== rate $rate/s, $workers workers, $duration (warm-up $warmup)" >&2
  summary="target/bench-e2e-sim-$rate.json"
  "$bin" simulate --url "http://127.0.0.1:$PORT" --workers "$workers" --customers 200 \
    --duration "$duration" --warmup "$warmup" --rate "$rate" --accept-rate 0.8 --cancel-rate 0 \
    --job-seconds 5 --location-every 4 --drain-seconds 30 --json --check >"$summary" &
  sim=$!
  samples="target/bench-e2e-cpu-$rate.txt"
  : >"$samples"
  sample_cpu "$samples" "$db" "engine:$server" "simulator:$sim" &
  sampler=$!
  wait "$sim" || true
  # The engine's and its backends' last samples, before it stops.
  sleep 1
  kill "$sampler"; wait "$sampler" 2>/dev/null || true
  kill "$server"; wait "$server" 2>/dev/null || true
  cat "$summary"
  created="$(grep -o '"created":[0-9]*' "$summary" | head -1 | cut -d: -f2)"
  awk -v tick="$tick" -v created="${created:-0}" -v rate="$rate" '
    { last[$1 " " $2] = $3 }
    END {
      for (k in last) { split(k, p, " "); total[p[1]] += last[k] / tick }
      printf "{\"rate\":%s,\"created\":%d,\"cpu_seconds\":{", rate, created
      printf "\"engine\":%.2f,\"postgres\":%.2f,\"simulator\":%.2f}", total["engine"], total["postgres"], total["simulator"]
      printf ",\"cpu_seconds_per_created\":{"
      n = created > 0 ? created : 1
      printf "\"engine\":%.6f,\"postgres\":%.6f,\"simulator\":%.6f,\"engine_plus_postgres\":%.6f}}\n",
        total["engine"] / n, total["postgres"] / n, total["simulator"] / n, (total["engine"] + total["postgres"]) / n
    }' "$samples"
done
