#!/usr/bin/env bash
# Checks the platform and ops artifacts with the real tools, on a fresh Debian machine too
# (it installs what is missing). Quick: no image build, no engine needed.
#
#   - deploy/prometheus: promtool check rules, promtool test rules, promtool check config;
#     every alert has a unit test in which it fires
#   - deploy/grafana/arreglame.json: valid JSON, dashboard structure, every PromQL
#     expression parsed by promtool
#   - every arreglame_* metric used by alerts and dashboard exists in src/
#   - compose.yaml: podman-compose config and the Compose Specification JSON schema
#   - Dockerfile and deploy/container/Containerfile.local: parsed with the BuildKit parser,
#     non-root runtime, COPY sources present
#   - deploy/systemd/arreglame.service: systemd-analyze verify (when systemd-analyze exists)
#   - .env.example names every variable src/config.rs reads
#
# Exit status: non-zero when any check fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root="$PWD"
work="$root/target/deploy-check"
mkdir -p "$work"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

failures=0
pass() { echo "ok   $*"; }
fail() { echo "FAIL $*"; failures=$((failures + 1)); }

# --- tools ---------------------------------------------------------------------------
apt_updated=0
apt_install() {
  if [[ $apt_updated == 0 ]]; then
    apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
command -v promtool >/dev/null || apt_install prometheus
command -v systemd-analyze >/dev/null || apt_install systemd || true
[[ -x /usr/bin/python3 ]] && /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3 python3-venv

# Python tools in a venv kept under target/ (pinned; reused on later runs).
venv="$work/venv"
pins="podman-compose==1.6.0 check-jsonschema==0.39.0 dockerfile==3.4.0 PyYAML==6.0.2"
if [[ ! -x "$venv/bin/python" ]] || [[ "$(cat "$venv/.pins" 2>/dev/null)" != "$pins" ]]; then
  rm -rf "$venv"
  /usr/bin/python3 -m venv "$venv"
  # shellcheck disable=SC2086
  "$venv/bin/pip" install -q --disable-pip-version-check $pins
  echo "$pins" > "$venv/.pins"
fi
py="$venv/bin/python"

# --- Prometheus rules and config -----------------------------------------------------
if out=$(promtool check rules deploy/prometheus/alerts.yml 2>&1); then
  pass "promtool check rules deploy/prometheus/alerts.yml ($(grep -o '[0-9]* rules found' <<<"$out"))"
else
  echo "$out"; fail "promtool check rules deploy/prometheus/alerts.yml"
fi
if out=$(promtool test rules deploy/prometheus/alerts.test.yml 2>&1); then
  pass "promtool test rules deploy/prometheus/alerts.test.yml"
else
  echo "$out"; fail "promtool test rules deploy/prometheus/alerts.test.yml"
fi
# The example config names a token file under /etc/prometheus; check a copy that points at
# a throwaway one, with the rule file beside it.
mkdir -p "$tmp/prom"
cp deploy/prometheus/prometheus.yml deploy/prometheus/alerts.yml "$tmp/prom/"
echo placeholder > "$tmp/prom/token"
sed -i "s#/etc/prometheus/arreglame-metrics-token#$tmp/prom/token#" "$tmp/prom/prometheus.yml"
if out=$(promtool check config "$tmp/prom/prometheus.yml" 2>&1); then
  pass "promtool check config deploy/prometheus/prometheus.yml"
else
  echo "$out"; fail "promtool check config deploy/prometheus/prometheus.yml"
fi

# --- alerts tested, dashboard structure, metric names (Python) ------------------------
# Writes the dashboard's expressions as recording rules for promtool to parse.
if "$py" - "$tmp/dashboard-rules.yml" <<'PY'; then
import json, re, sys, pathlib, yaml

out_rules = sys.argv[1]
errors = []

# Every alert in alerts.yml has at least one test case where it fires, and one where not.
alerts = yaml.safe_load(open("deploy/prometheus/alerts.yml"))
names = [r["alert"] for g in alerts["groups"] for r in g["rules"] if "alert" in r]
tests = yaml.safe_load(open("deploy/prometheus/alerts.test.yml"))
fires, silent = set(), set()
for t in tests["tests"]:
    for case in t.get("alert_rule_test", []):
        (fires if case.get("exp_alerts") else silent).add(case["alertname"])
for n in names:
    if n not in fires:
        errors.append(f"alert {n}: no test in alerts.test.yml where it fires")
    if n not in silent:
        errors.append(f"alert {n}: no test in alerts.test.yml where it stays silent")
for n in (fires | silent) - set(names):
    errors.append(f"alerts.test.yml tests {n}, which alerts.yml does not define")

# Dashboard.
try:
    dash = json.load(open("deploy/grafana/arreglame.json"))
except ValueError as e:
    print(f"FAIL deploy/grafana/arreglame.json is not valid JSON: {e}")
    sys.exit(1)
if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
    errors.append("dashboard: schemaVersion missing or older than 36")
for key in ("title", "uid", "panels", "templating"):
    if key not in dash:
        errors.append(f"dashboard: no {key}")
variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
ds = [v for v in variables.values() if v.get("type") == "datasource" and v.get("query") == "prometheus"]
if not ds:
    errors.append("dashboard: no Prometheus datasource variable")
ds_ref = "${%s}" % ds[0]["name"] if ds else None

panels = []
def walk(ps):
    for p in ps:
        panels.append(p)
        walk(p.get("panels", []))
walk(dash.get("panels", []))
ids = [p.get("id") for p in panels]
if len(ids) != len(set(ids)) or None in ids:
    errors.append("dashboard: panel ids missing or not unique")
exprs = []
for p in panels:
    if p.get("type") == "row":
        continue
    if "gridPos" not in p:
        errors.append(f"panel {p.get('title')!r}: no gridPos")
    if (p.get("datasource") or {}).get("uid") != ds_ref:
        errors.append(f"panel {p.get('title')!r}: datasource is not {ds_ref}")
    if not p.get("targets"):
        errors.append(f"panel {p.get('title')!r}: no targets")
    for t in p.get("targets", []):
        if not t.get("expr"):
            errors.append(f"panel {p.get('title')!r} target {t.get('refId')}: no expr")
        else:
            exprs.append((p["title"], t["refId"], t["expr"]))
# Variables' label_values(<selector>, label): the selector is PromQL too.
for v in variables.values():
    q = v.get("query")
    q = q.get("query") if isinstance(q, dict) else q
    if v.get("type") == "query" and isinstance(q, str):
        m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", q)
        if m:
            exprs.append((f"variable {v['name']}", "query", m.group(1)))

# Grafana variables replaced by values of the same kind, so promtool parses plain PromQL.
subst = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
def plain(e):
    for k, val in subst.items():
        e = e.replace(k, val)
    return re.sub(r"\$\{?(\w+)\}?", ".*", e)
rules = {"groups": [{"name": "dashboard", "rules": [
    {"record": f"dashboard:expr_{i}", "expr": plain(e)} for i, (_, _, e) in enumerate(exprs)]}]}
yaml.safe_dump(rules, open(out_rules, "w"), sort_keys=False)
pathlib.Path(out_rules + ".index").write_text(
    "\n".join(f"dashboard:expr_{i}  {t} [{r}]" for i, (t, r, _) in enumerate(exprs)))

# The dashboard shows what issue 17 asks for.
text = json.dumps(dash)
for metric in ["arreglame_service_requests_created_total", "arreglame_time_to_assignment_seconds_bucket",
               "arreglame_offers_accepted_total", "arreglame_concurrency_conflicts_total",
               "arreglame_ai_pricing_fallbacks_total", "arreglame_cron_failures_total",
               "arreglame_db_query_duration_seconds_bucket", "arreglame_worker_finder_duration_seconds_bucket",
               "arreglame_outbox_lag_seconds"]:
    if metric not in text:
        errors.append(f"dashboard: no panel uses {metric}")

# Every arreglame_* metric named by the alerts and the dashboard is one the engine exports.
src = "\n".join(p.read_text() for p in pathlib.Path("src").rglob("*.rs"))
known = set(re.findall(r'"(arreglame_[a-z0-9_]+)"', src))
used = set(re.findall(r"arreglame_[a-z0-9_]+", open("deploy/prometheus/alerts.yml").read() + text))
for m in sorted(used):
    base = re.sub(r"_(bucket|count|sum)$", "", m)
    if m not in known and base not in known:
        errors.append(f"metric {m} (alerts or dashboard) is not exported by src/")

for e in errors:
    print("FAIL " + e)
print(f"ok   {len(names)} alerts each tested firing and silent; dashboard: {len(panels)} panels, "
      f"{len(exprs)} expressions; {len(used)} metric names all in src/")
sys.exit(1 if errors else 0)
PY
  pass "alert tests, dashboard structure and metric names"
else
  fail "alert tests, dashboard structure or metric names"
fi
if [[ -s "$tmp/dashboard-rules.yml" ]]; then
  if out=$(promtool check rules "$tmp/dashboard-rules.yml" 2>&1); then
    pass "promtool parses every dashboard expression ($(grep -o '[0-9]* rules found' <<<"$out"))"
  else
    echo "$out"; echo "(rule names: $(cat "$tmp/dashboard-rules.yml.index"))"
    fail "dashboard PromQL"
  fi
fi

# --- compose.yaml ----------------------------------------------------------------------
# `config` only reads the files; podman-compose still asks `podman --version` first, so a
# machine without podman gets a stand-in that answers it.
podman_path="$(command -v podman || true)"
if [[ -z $podman_path ]]; then
  podman_path="$tmp/podman"
  printf '#!/bin/sh\necho "podman version 4.3.1"\n' > "$podman_path"
  chmod +x "$podman_path"
fi
if out=$(JWT_SECRET=check-deploy-secret-of-thirty-two-chars METRICS_TOKEN=check \
         "$venv/bin/podman-compose" --podman-path "$podman_path" -f compose.yaml config 2>&1 >"$tmp/compose.resolved.yaml"); then
  services=$("$py" -c 'import sys,yaml; print(" ".join(sorted(yaml.safe_load(open(sys.argv[1]))["services"])))' "$tmp/compose.resolved.yaml")
  for s in engine postgres nats; do
    [[ " $services " == *" $s "* ]] || fail "compose.yaml has no service $s"
  done
  pass "podman-compose config compose.yaml (services: $services)"
else
  echo "$out"; fail "podman-compose config compose.yaml"
fi
if out=$("$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec compose.yaml 2>&1); then
  pass "compose.yaml matches the Compose Specification schema"
else
  echo "$out"; fail "compose.yaml against the Compose Specification schema"
fi

# --- Dockerfile and Containerfile.local ------------------------------------------------
if "$py" - <<'PY'; then
import os, sys, dockerfile
errors = []
for path, context in [("Dockerfile", "."), ("deploy/container/Containerfile.local", None)]:
    try:
        cmds = dockerfile.parse_file(path)
    except dockerfile.GoParseError as e:
        errors.append(f"{path}: {e}")
        continue
    froms = [i for i, c in enumerate(cmds) if c.cmd == "FROM"]
    last = cmds[froms[-1]:]
    ops = {c.cmd for c in last}
    for need in ("USER", "ENTRYPOINT", "EXPOSE", "HEALTHCHECK"):
        if need not in ops:
            errors.append(f"{path}: the runtime stage has no {need}")
    users = [c.value[0] for c in last if c.cmd == "USER"]
    if users and users[-1].split(":")[0] in ("root", "0"):
        errors.append(f"{path}: the runtime stage runs as root")
    if context:
        for c in cmds:
            if c.cmd in ("COPY", "ADD") and not any(f.startswith("--from") for f in c.flags):
                for srcpath in c.value[:-1]:
                    if not os.path.exists(os.path.join(context, srcpath)):
                        errors.append(f"{path}: COPY source {srcpath} does not exist")
    print(f"ok   {path}: {len(froms)} stage(s), runtime user {users[-1] if users else '?'}")
for e in errors:
    print("FAIL " + e)
sys.exit(1 if errors else 0)
PY
  pass "Dockerfile and Containerfile.local parse (BuildKit parser)"
else
  fail "Dockerfile or Containerfile.local"
fi

# --- systemd unit ------------------------------------------------------------------------
if command -v systemd-analyze >/dev/null; then
  # verify insists that ExecStart exists: point it at a stub with the same name.
  mkdir -p "$tmp/bin"
  printf '#!/bin/sh\nexit 0\n' > "$tmp/bin/arreglame"
  chmod +x "$tmp/bin/arreglame"
  sed "s#/usr/local/bin/arreglame#$tmp/bin/arreglame#g" deploy/systemd/arreglame.service > "$tmp/arreglame.service"
  # It exits 0 on unknown keys and bad values (warnings only): any output is a failure.
  out=$(systemd-analyze verify "$tmp/arreglame.service" 2>&1) && rc=0 || rc=$?
  if [[ $rc == 0 && -z "$out" ]]; then
    pass "systemd-analyze verify deploy/systemd/arreglame.service"
  else
    echo "$out"; fail "systemd-analyze verify deploy/systemd/arreglame.service"
  fi
else
  echo "skip systemd-analyze is not installed"
fi

# --- .env.example ------------------------------------------------------------------------
missing=()
for name in $(grep -oE '"[A-Z][A-Z0-9_]{2,}"' src/config.rs | tr -d '"' | sort -u); do
  grep -qE "^#? ?${name}=" .env.example || missing+=("$name")
done
if [[ ${#missing[@]} == 0 ]]; then
  pass ".env.example names every variable in src/config.rs"
else
  fail ".env.example lacks: ${missing[*]}"
fi

for f in LICENSE CHANGELOG.md .dockerignore; do
  [[ -s $f ]] || fail "$f is missing"
done
grep -q '^## \[Unreleased\]' CHANGELOG.md || fail "CHANGELOG.md has no [Unreleased] section"

if [[ $failures == 0 ]]; then
  echo "check-deploy: all checks passed"
else
  echo "check-deploy: $failures check(s) failed"
  exit 1
fi
