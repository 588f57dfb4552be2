#!/usr/bin/env bash
# Failover drill (issue 14): a 3-server NATS cluster (JetStream, routes on loopback), one
# PostgreSQL, 3 engine nodes with ARREGLAME_CLUSTER=nats, and the simulator across all three
# nodes in 2 cities; then, each repeated DRILL_REPEATS times (5):
#   owner_kill        kill -9 of a simulated city's owner (then started again)
#   owner_stop        SIGSTOP of an owner for twice the lease, then SIGCONT (a stale owner)
#   nats_leader_kill  kill -9 of the NATS server leading the city_owner KV stream
#   rolling_restart   SIGTERM and restart of every node, one after another
# Prints one JSON object: per fault kind `takeover_ms` {p50, p95, max} (the fault to the next
# new offer frame a worker receives in that city) and overall `lost`, `double_assigned`,
# `stale_writes_refused`, `stale_writes_accepted`, `outbox_rows`, `stream_messages`, plus
# each simulator's summary with its database cross-check (`simulate --check`).
#
#   scripts/failover-drill.sh
#
# DRILL_REPEATS (5), DRILL_WORKERS (300, over both cities), DRILL_RATE (creates/s per city,
# 2), DRILL_LEASE (CITY_LEASE_SECONDS, 4), DRILL_KINDS (all four, comma separated),
# DRILL_BIN (a built binary instead of a release build), DRILL_USE_RUNNING_SERVERS=1 (the
# PostgreSQL at DATABASE_URL as it is). Logs and the offer logs go to target/drill/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ "${DRILL_USE_RUNNING_SERVERS:-0}" != 1 ]; then eval "$(scripts/dev-env.sh)"; fi
command -v nats-server >/dev/null || { apt-get update -qq && apt-get install -y -qq nats-server >/dev/null; }
command -v python3 >/dev/null || { apt-get update -qq && apt-get install -y -qq python3 >/dev/null; }
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
bin="${DRILL_BIN:-target/release/arreglame}"
[ -n "${DRILL_BIN:-}" ] || cargo build --release --bin arreglame >&2
DRILL_BIN="$bin" exec python3 scripts/failover_drill.py
