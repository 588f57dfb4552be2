#!/usr/bin/env bash
# Starts Debian's real Prometheus server scraping a running engine's /metrics with the
# alert rules of deploy/prometheus/alerts.yml loaded, and checks, through Prometheus' HTTP
# API, that the target is up, that the engine's metrics were ingested, that a query over
# them evaluates, and that every rule group has been evaluated without error.
#
#   scripts/check-prometheus-scrape.sh METRICS_URL [METRICS_TOKEN]
#     METRICS_URL    e.g. http://127.0.0.1:3000/metrics (or the METRICS_ADDR one)
#     METRICS_TOKEN  sent as `Authorization: Bearer`; omit for METRICS_ADDR
#   PROMETHEUS_PORT  where Prometheus listens (default 39090)
set -euo pipefail
url="${1:?usage: $0 METRICS_URL [METRICS_TOKEN]}"
token="${2:-}"
port="${PROMETHEUS_PORT:-39090}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if ! command -v prometheus >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

re='^(https?)://([^/]+)(/.*)?$'
[[ $url =~ $re ]] || { echo "not an http(s) URL: $url" >&2; exit 2; }
scheme="${BASH_REMATCH[1]}" target="${BASH_REMATCH[2]}" path="${BASH_REMATCH[3]:-/metrics}"

dir="$(mktemp -d)"
prom_pid=""
cleanup() {
  if [[ -n $prom_pid ]]; then kill "$prom_pid" 2>/dev/null || true; wait "$prom_pid" 2>/dev/null || true; fi
  rm -rf "$dir"
}
trap cleanup EXIT

cp "$root/deploy/prometheus/alerts.yml" "$dir/alerts.yml"
auth=""
if [[ -n $token ]]; then
  printf '%s' "$token" > "$dir/token"
  auth="    authorization:
      type: Bearer
      credentials_file: $dir/token"
fi
cat > "$dir/prometheus.yml" <<EOF
global:
  scrape_interval: 2s
  evaluation_interval: 2s
rule_files:
  - alerts.yml
scrape_configs:
  - job_name: arreglame
    scheme: $scheme
    metrics_path: $path
$auth
    static_configs:
      - targets: ['$target']
EOF
promtool check config "$dir/prometheus.yml" >/dev/null

prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/data" \
  --web.listen-address="127.0.0.1:$port" --log.level=warn >"$dir/prometheus.log" 2>&1 &
prom_pid=$!
api="http://127.0.0.1:$port/api/v1"

json() { python3 -c "import json,sys; d=json.load(sys.stdin); $1"; }
deadline=$((SECONDS + 60))
health=""
until [[ $health == up ]]; do
  if (( SECONDS > deadline )); then
    echo "FAIL the target never came up; last state: $health"
    curl -s "$api/targets" || true; echo; tail -20 "$dir/prometheus.log"
    exit 1
  fi
  if ! kill -0 "$prom_pid" 2>/dev/null; then
    echo "FAIL prometheus exited"; cat "$dir/prometheus.log"; exit 1
  fi
  sleep 1
  health=$(curl -sf "$api/targets" 2>/dev/null | json '
t=[t for t in d["data"]["activeTargets"] if t["labels"].get("job")=="arreglame"]
print(t[0]["health"] + ((" " + t[0]["lastError"]) if t and t[0]["lastError"] else "") if t else "none")' 2>/dev/null || echo starting)
done
echo "ok   target $target is up (GET /api/v1/targets)"

query() { curl -sf --get "$api/query" --data-urlencode "query=$1"; }
# Samples of the engine's own metrics arrived, and a rate over them evaluates.
sleep 5
n=$(query 'count({job="arreglame", __name__=~"arreglame_.+"})' | json 'r=d["data"]["result"]; print(int(float(r[0]["value"][1])) if r else 0)')
(( n > 0 )) || { echo "FAIL no arreglame_* series ingested"; exit 1; }
echo "ok   $n arreglame_* series ingested"
v=$(query 'sum(rate(arreglame_offers_sent_total{job="arreglame"}[10s])) >= 0' | json 'r=d["data"]["result"]; print(r[0]["value"][1] if r else "empty")')
[[ $v != empty ]] || { echo "FAIL the query over arreglame_offers_sent_total returned nothing"; exit 1; }
echo "ok   query sum(rate(arreglame_offers_sent_total[10s])) = $v"

# alerts.yml groups cron metrics by `exported_job`: the engine's own `job` label, renamed by
# Prometheus (honor_labels: false). Checked once a cron has run (the default schedule is
# every minute).
c=$(query 'count(arreglame_cron_runs_total{job="arreglame"})' | json 'r=d["data"]["result"]; print(r[0]["value"][1] if r else 0)')
if [[ $c != 0 ]]; then
  e=$(query 'count(arreglame_cron_runs_total{job="arreglame", exported_job=~".+Cron"})' | json 'r=d["data"]["result"]; print(r[0]["value"][1] if r else 0)')
  [[ $e == "$c" ]] || { echo "FAIL arreglame_cron_runs_total has no exported_job label; alerts.yml needs it"; exit 1; }
  echo "ok   cron series carry exported_job ($e series)"
else
  echo "     no cron has run yet: the exported_job label is not checked"
fi

# Every rule group has been evaluated and no rule reports an error.
deadline=$((SECONDS + 30))
while :; do
  state=$(curl -sf "$api/rules" | json '
rules=[r for g in d["data"]["groups"] for r in g["rules"]]
bad=[r["name"]+": "+r.get("lastError","") for r in rules if r["health"]!="ok"]
print("bad " + "; ".join(bad) if bad else "ok %d" % len(rules))')
  [[ $state == ok* ]] && break
  (( SECONDS > deadline )) && { echo "FAIL rules: $state"; exit 1; }
  sleep 1
done
echo "ok   ${state#ok } alert rules evaluated with health ok (GET /api/v1/rules)"
firing=$(curl -sf "$api/alerts" | json 'print(", ".join(sorted({a["labels"]["alertname"]+"("+a["state"]+")" for a in d["data"]["alerts"]})) or "none")')
echo "     alerts pending or firing against this engine: $firing"
echo "check-prometheus-scrape: passed"
