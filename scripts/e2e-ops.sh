#!/usr/bin/env bash
# Browser test of the ops dashboard: the engine on a fresh database, Debian's chromium
# driven by playwright-core. Keeps target/artifacts/ops-dashboard.png (desktop) and
# target/artifacts/ops-dashboard-phone.png (390x844).
#
#   E2E_DB    the database it drops and creates (default arreglame_e2e)
#   E2E_PORT  the engine's port (default 3999)
# Set both when another checkout may run this script on the same servers at the same time.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
eval "$(scripts/dev-env.sh)"
log() { echo "[e2e] $*" >&2; }

if [ ! -x /usr/bin/chromium ]; then
  log "installing chromium"
  if [ "$(id -u)" -eq 0 ]; then sudo_=(); else sudo_=(sudo); fi
  "${sudo_[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  "${sudo_[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >&2
fi
work=target/e2e
mkdir -p "$work" target/artifacts
cp tests/e2e/package.json tests/e2e/ops_dashboard.mjs "$work/"
if [ ! -d "$work/node_modules/playwright-core" ]; then
  log "npm install playwright-core"
  (cd "$work" && npm install --silent --no-audit --no-fund >&2)
fi

cargo build --bin arreglame >&2
bin=target/debug/arreglame
db="${E2E_DB:-arreglame_e2e}"
[[ $db =~ ^[a-z_][a-z0-9_]*$ ]] || { log "E2E_DB must be a plain lower-case name: $db"; exit 2; }
admin="${DATABASE_URL%/*}/postgres"
psql "$admin" -qc "drop database if exists $db" >/dev/null
psql "$admin" -qc "create database $db" >/dev/null
export DATABASE_URL="${DATABASE_URL%/*}/$db"
unset NATS_URL
export PORT="${E2E_PORT:-3999}" HOST=127.0.0.1 LOG_LEVEL=warn
"$bin" migrate >/dev/null
"$bin" seed >/dev/null
"$bin" serve &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
  sleep 0.1
done
ops_token="$("$bin" token --role ops --sub 00000000-0000-4000-8000-0000000000f1)"
ARREGLAME_URL="http://127.0.0.1:$PORT" \
OPS_TOKEN="$ops_token" \
CUSTOMER_TOKEN="$("$bin" token --role customer --sub 00000000-0000-4000-8000-000000000c01)" \
SCREENSHOT="$PWD/target/artifacts/ops-dashboard.png" \
SCREENSHOT_PHONE="$PWD/target/artifacts/ops-dashboard-phone.png" \
node "$work/ops_dashboard.mjs"
# The same engine scraped by Debian's real Prometheus server, with the shipped alert rules.
log "prometheus scrape check"
PROMETHEUS_PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')" \
  scripts/check-prometheus-scrape.sh "http://127.0.0.1:$PORT/metrics" "$ops_token"
# Every family with HELP and TYPE, names and values as Prometheus' own linter wants them.
log "promtool check metrics"
curl -fsS -H "Authorization: Bearer $ops_token" "http://127.0.0.1:$PORT/metrics" | promtool check metrics
