#!/usr/bin/env bash
# End-to-end benchmark (issues 8 and 13), on a durable PostgreSQL it starts itself
# (scripts/pg-durable.sh: fsync, synchronous_commit and full_page_writes on).
#
#   scripts/bench-e2e.sh [workers=10000] [duration=30s] [rates="500 1000"] [warmup=5s]
#
# Each of BENCH_RUNS runs (3) measures, on the same cluster and in the same run:
# - the **baseline**: benches/pgbench-request-life.sh, pgbench replaying one request's
#   whole life as the engine at adb545c sent it, BENCH_BASELINE_CLIENTS (32) clients for
#   BENCH_BASELINE_SECONDS (10), on a fresh migrated and seeded database;
# - the **engine** at each offered rate: a release engine (with NATS, as in production) on
#   a fresh database, then `arreglame simulate` with N workers sending a location every 4 s
#   and customers open-loop (a warm-up left out; `--check` cross-checks the database).
#   The CPU of the engine, of every process of the durable PostgreSQL (its backends and
#   its WAL writer, checkpointer and autovacuum) and of the simulator is sampled every
#   second from /proc.
# One JSON line per run and rate goes to stdout (and target/bench-e2e/results.jsonl):
# achieved rate, create → offer p50/p99/p99.9, time to assign, misses, engine creates/s
# over the baseline's requests/s, CPU milliseconds per created request (steady state: the
# CPU spent in the measured window over the requests created in it; `_whole_run` also
# charges the fleet's going online, the warm-up and the drain). The last lines are the
# medians per rate over the runs.
#
# BENCH_USE_RUNNING_SERVERS=1 uses the PostgreSQL and NATS of DATABASE_URL and NATS_URL
# as they are (durable or not: the output says which); BENCH_BIN runs that binary instead
# of building a release one; BENCH_DB and BENCH_PORT name the database (re-created) and
# the engine's port.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
workers="${1:-10000}"
duration="${2:-30s}"
rates="${3:-500 1000}"
warmup="${4:-5s}"
runs="${BENCH_RUNS:-3}"
if [ "${BENCH_USE_RUNNING_SERVERS:-0}" = 1 ]; then
  server="${DATABASE_URL%/*}"
else
  # dev-env installs what is missing and starts NATS (its own PostgreSQL is not used here).
  eval "$(scripts/dev-env.sh)"
  server="$(scripts/pg-durable.sh)"
fi
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
bin="${BENCH_BIN:-target/release/arreglame}"
[ -n "${BENCH_BIN:-}" ] || cargo build --release --bin arreglame >&2
port="${BENCH_PORT:-3911}"
db="${BENCH_DB:-bench_e2e}"
tick="$(getconf CLK_TCK)"
out=target/bench-e2e
mkdir -p "$out"
: >"$out/results.jsonl"
# The cluster's postmaster: its children are what PostgreSQL spends.
postmaster="$(psql "$server/postgres" -At -c "select pid from pg_stat_activity where backend_type = 'checkpointer'" | xargs -r ps -o ppid= -p | tr -d ' ')"
[ -n "$postmaster" ] || { echo "bench-e2e: cannot find the postmaster of $server" >&2; exit 1; }
durability="$(psql "$server/postgres" -At -c "select string_agg(name || '=' || setting, ' ' order by name) from pg_settings where name in ('fsync', 'synchronous_commit', 'full_page_writes', 'autovacuum_naptime')")"
echo "== PostgreSQL at $server: $durability; $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2

fresh_database() {
  psql "$server/postgres" -qc "drop database if exists $1 with (force)" >/dev/null 2>&1
  psql "$server/postgres" -qc "create database $1" >/dev/null
  DATABASE_URL="$server/$1" "$bin" migrate >/dev/null
  DATABASE_URL="$server/$1" "$bin" seed >/dev/null
  psql "$server/$1" -qc "create extension if not exists pg_stat_statements" >/dev/null 2>&1 || true
}

# Every second: "<unix seconds> <role> <pid> <utime+stime ticks>" for the engine, the
# simulator and each child of the durable cluster's postmaster (the bench database's
# backends and the cluster's own workers; nothing else uses that cluster during a run). CPU counters only grow, so the last sample of
# each pid is its total; sampling (not one read at the end) keeps backends that exited (the
# pool's connections live through the run). Two processes per sample (ps, awk): the
# sampler's own CPU stays small beside what it measures.
sample_cpu() {
  local samples="$1" postmaster="$2" engine="$3" simulator="$4"
  while :; do
    ps -eo pid=,ppid= | awk -v now="${EPOCHREALTIME/,/.}" -v postmaster="$postmaster" -v engine="$engine" -v simulator="$simulator" '
      $1 == engine { role[$1] = "engine" }
      $1 == simulator { role[$1] = "simulator" }
      $2 == postmaster { role[$1] = "postgres" }
      END {
        for (pid in role) {
          file = "/proc/" pid "/stat"
          if ((getline line < file) > 0) { split(line, f, " "); print now, role[pid], pid, f[14] + f[15] }
          close(file)
        }
      }' >>"$samples" 2>/dev/null || true
    sleep 1
  done
}

for run in $(seq 1 "$runs"); do
  fresh_database "${db}_baseline"
  echo "== run $run/$runs: baseline, pgbench replaying adb545c's per-request SQL" >&2
  baseline="$(DATABASE_URL="$server/${db}_baseline" benches/pgbench-request-life.sh \
    "${BENCH_BASELINE_CLIENTS:-32}" "${BENCH_BASELINE_SECONDS:-10}")"
  echo "$baseline" >"$out/baseline-$run.json"
  echo "$baseline" >&2
  psql "$server/postgres" -qc "drop database if exists ${db}_baseline with (force)" >/dev/null 2>&1
  for rate in $rates; do
    fresh_database "$db"
    export DATABASE_URL="$server/$db" PORT="$port" HOST=127.0.0.1 LOG_LEVEL=warn DATABASE_MAX_CONNECTIONS=40 \
      METRICS_TOKEN=bench-e2e
    "$bin" serve >"$out/serve-$run-$rate.log" 2>&1 &
    engine=$!
    for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break; sleep 0.1; done
    echo "== run $run/$runs: rate $rate/s, $workers workers, $duration (warm-up $warmup)" >&2
    summary="$out/sim-$run-$rate.json"
    # At most one create per second per customer: the engine's per-caller quote quota
    # (PRICING_RATE_PER_MINUTE 120, burst 30) would otherwise refuse creates as RATE_LIMITED.
    customers=$(( rate > 200 ? rate : 200 ))
    # Statements from here on (pg_stat_statements, loaded by scripts/pg-durable.sh).
    psql "$server/$db" -qAt -c "select pg_stat_statements_reset()" >/dev/null 2>&1 || true
    "$bin" simulate --url "http://127.0.0.1:$PORT" --workers "$workers" --customers "$customers" \
      --duration "$duration" --warmup "$warmup" --rate "$rate" --accept-rate 0.8 --cancel-rate 0 \
      --job-seconds 5 --location-every 4 --drain-seconds 30 --json --check >"$summary" &
    sim=$!
    samples="$out/cpu-$run-$rate.txt"
    : >"$samples"
    sample_cpu "$samples" "$postmaster" "$engine" "$sim" &
    sampler=$!
    wait "$sim" || true
    sleep 1 # the engine's and its backends' last samples, before it stops
    kill "$sampler"; wait "$sampler" 2>/dev/null || true
    # The engine's own histograms (group sizes, statement and acquire times), for reading.
    curl -fs -H "Authorization: Bearer $METRICS_TOKEN" "http://127.0.0.1:$PORT/metrics" >"$out/metrics-$run-$rate.txt" 2>/dev/null || true
    kill "$engine"; wait "$engine" 2>/dev/null || true
    # What PostgreSQL did for it: statements (every top-level call of the bench database,
    # the workers' going online included) and how many row updates were HOT.
    database="$(psql "$server/$db" -qAt -c "select json_build_object(
        'statements', (select coalesce(sum(calls), 0) from pg_stat_statements
                       where dbid = (select oid from pg_database where datname = current_database())),
        'service_request_updates', (select n_tup_upd from pg_stat_user_tables where relname = 'service_requests'),
        'service_request_hot_updates', (select n_tup_hot_upd from pg_stat_user_tables where relname = 'service_requests'))" 2>/dev/null || echo '{}')"
    # CPU over the whole run, and over the measured window alone (the simulator's
    # measured_from/until_unix_ms: after the warm-up, until the last create was due). The
    # window is the steady state: the 10 000 sessions' going online before it and the drain
    # after it are not charged to the requests, their location frames during it are.
    read -r from_s until_s < <(python3 -c 'import json, sys; s = json.load(open(sys.argv[1]))
print(s.get("measured_from_unix_ms", 0) / 1e3, s.get("measured_until_unix_ms", 0) / 1e3)' "$summary")
    cpu="$(awk -v tick="$tick" -v from="$from_s" -v until="$until_s" '
      { key = $2 " " $3; last[key] = $4
        if ($1 + 0 <= from + 0) base[key] = $4
        if ($1 + 0 <= until + 0) upto[key] = $4 }
      END { for (k in last) { split(k, p, " "); total[p[1]] += last[k] / tick
                              window[p[1]] += (upto[k] - base[k]) / tick }
            printf "{\"engine\":%.2f,\"postgres\":%.2f,\"simulator\":%.2f,", total["engine"], total["postgres"], total["simulator"]
            printf "\"window\":{\"engine\":%.2f,\"postgres\":%.2f,\"simulator\":%.2f}}", window["engine"], window["postgres"], window["simulator"] }' "$samples")"
    python3 - "$run" "$rate" "$summary" "$cpu" "$baseline" "$durability" "$database" <<'PY' | tee -a "$out/results.jsonl"
import json, sys
run, rate, summary_path, cpu, baseline, durability, database = sys.argv[1:]
sim = json.load(open(summary_path))
cpu, baseline, database = json.loads(cpu), json.loads(baseline), json.loads(database or "{}")
created = max(sim.get("created", 0), 1)
measured = max(sim.get("measured", 0), 1)
window = cpu.pop("window")
ms = lambda seconds, per=measured: round(seconds * 1000.0 / per, 3)
print(json.dumps({
    "run": int(run), "offered_per_second": sim.get("offered_per_second"),
    "achieved_per_second": sim.get("achieved_per_second"),
    "create_to_offer_ms": sim.get("create_to_offer_ms"),
    "time_to_assign_ms": sim.get("time_to_assign_ms"),
    "never_offered": sim.get("never_offered"), "created": sim.get("created"),
    "assigned": sim.get("assigned"), "unassigned": sim.get("unassigned"),
    "cancelled": sim.get("cancelled"), "check_ok": (sim.get("check") or {}).get("ok"),
    "baseline_requests_per_second": baseline["requests_per_second"],
    "engine_over_baseline": round((sim.get("achieved_per_second") or 0) / baseline["requests_per_second"], 2),
    # Steady state: CPU in the measured window over the requests created in it.
    "cpu_seconds_measured_window": window,
    "cpu_seconds_per_created": {k: round(v / measured, 6) for k, v in
                                dict(window, engine_plus_postgres=window["engine"] + window["postgres"]).items()},
    "cpu_ms_per_created": {"engine": ms(window["engine"]), "postgres": ms(window["postgres"]),
                           "simulator": ms(window["simulator"]),
                           "engine_plus_postgres": ms(window["engine"] + window["postgres"])},
    # The whole run (going online, warm-up, drain) over every created request.
    "cpu_seconds": cpu,
    "cpu_ms_per_created_whole_run": {"engine": ms(cpu["engine"], created),
                                     "postgres": ms(cpu["postgres"], created),
                                     "simulator": ms(cpu["simulator"], created),
                                     "engine_plus_postgres": ms(cpu["engine"] + cpu["postgres"], created)},
    "statements_per_created": round(database.get("statements", 0) / created, 2),
    "hot_update_share": round((database.get("service_request_hot_updates") or 0)
                              / max(database.get("service_request_updates") or 0, 1), 3),
    "postgres": durability,
}))
PY
  done
done

echo "== medians over $runs runs" >&2
python3 - "$out/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
by_rate = {}
for row in rows:
    by_rate.setdefault(row["offered_per_second"], []).append(row)
med = lambda values: statistics.median(values) if values else None
for rate, rs in sorted(by_rate.items(), key=lambda kv: kv[0] or 0):
    print(json.dumps({"median_of_runs": len(rs), "offered_per_second": rate,
        "achieved_per_second": med([r["achieved_per_second"] for r in rs]),
        "create_to_offer_p50_ms": med([r["create_to_offer_ms"]["p50"] for r in rs]),
        "create_to_offer_p99_ms": med([r["create_to_offer_ms"]["p99"] for r in rs]),
        "create_to_offer_p999_ms": med([r["create_to_offer_ms"]["p999"] for r in rs]),
        "time_to_assign_p99_ms": med([r["time_to_assign_ms"]["p99"] for r in rs]),
        "never_offered": med([r["never_offered"] for r in rs]),
        "baseline_requests_per_second": med([r["baseline_requests_per_second"] for r in rs]),
        "engine_over_baseline": med([r["engine_over_baseline"] for r in rs]),
        "engine_cpu_ms_per_created": med([r["cpu_ms_per_created"]["engine"] for r in rs]),
        "postgres_cpu_ms_per_created": med([r["cpu_ms_per_created"]["postgres"] for r in rs]),
        "engine_plus_postgres_cpu_ms_per_created": med([r["cpu_ms_per_created"]["engine_plus_postgres"] for r in rs]),
        "engine_plus_postgres_cpu_ms_per_created_whole_run": med([r["cpu_ms_per_created_whole_run"]["engine_plus_postgres"] for r in rs]),
        "simulator_cpu_ms_per_created": med([r["cpu_ms_per_created"]["simulator"] for r in rs]),
        "statements_per_created": med([r["statements_per_created"] for r in rs]),
        "hot_update_share": med([r["hot_update_share"] for r in rs]),
        "all_checks_ok": all(r["check_ok"] for r in rs)}))
PY
