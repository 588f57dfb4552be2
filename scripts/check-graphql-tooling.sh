#!/usr/bin/env bash
# The customer GraphQL API through the standard tooling of its ecosystem (docs/graphql.md):
#
#   JWT_SECRET=... scripts/check-graphql-tooling.sh <engine URL>      e.g. http://127.0.0.1:8080
#   DATABASE_URL=... JWT_SECRET=... scripts/check-graphql-tooling.sh --own-engine
#
# With --own-engine (CI) it starts the engine itself: a fresh database on DATABASE_URL's
# server (psql), `arreglame migrate`, `seed`, `serve` on a free loopback port; it stops the
# engine and drops the database afterwards. GRAPHQL_TOOLING_PORT fixes the port.
#
# 1. graphql-codegen (typescript + typescript-operations) generates TypeScript from
#    docs/schema.graphql for the operations of scripts/graphql-tooling/operations.graphql;
#    tsc type-checks the generated code together with the live test that uses it;
# 2. the live test (scripts/graphql-tooling/live-test.ts) against the running engine:
#    graphql-js's getIntrospectionQuery() over HTTP and over graphql-ws (the live schema
#    must match docs/schema.graphql), then, with the reference graphql-ws client and `ws`,
#    a request created as the seeded customer and its serviceRequestUpdated subscription
#    (connectionParams {headers: {Authorization: "Bearer ..."}}) delivering the snapshot.
#
# The engine must run outside production (introspection) with the seeds loaded and the same
# JWT_SECRET; the customer token is signed by `arreglame token` (ARREGLAME_BIN, default
# target/debug/arreglame). npm packages are pinned by scripts/graphql-tooling/package-lock.json
# and installed with `npm ci` into target/graphql-tooling.
# Exit status: 0 all passed; 1 a check failed; 2 setup failed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$root/scripts/graphql-tooling"
dir="$root/target/graphql-tooling"
engine="${1:-}"
customer="${GRAPHQL_TOOLING_CUSTOMER:-00000000-0000-4000-8000-000000000c01}"
bin="${ARREGLAME_BIN:-$root/target/debug/arreglame}"

fail() { echo "check-graphql-tooling: $*" >&2; exit 2; }
[ -n "$engine" ] || fail "usage: $0 <engine URL>"
command -v node >/dev/null || fail "node is required"
command -v npm >/dev/null || fail "npm is required"
[ "$(node -p 'process.versions.node.split(".")[0]')" -ge 20 ] || fail "node >= 20 is required (found $(node --version))"
: "${JWT_SECRET:?check-graphql-tooling: JWT_SECRET must be set, the same as the engine}"
[ -x "$bin" ] || fail "engine binary $bin not found (cargo build, or set ARREGLAME_BIN)"

if [ "$engine" = "--own-engine" ]; then
  : "${DATABASE_URL:?check-graphql-tooling: --own-engine needs DATABASE_URL (eval \"\$(scripts/dev-env.sh)\")}"
  command -v psql >/dev/null || fail "--own-engine needs psql"
  server="${DATABASE_URL%/*}"
  db="graphql_tooling_$$"
  log="$root/target/graphql-tooling/engine.log"
  mkdir -p "$dir"
  pid=""
  cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    psql "$server/postgres" -qc "drop database if exists \"$db\"" >/dev/null 2>&1 || true
  }
  trap cleanup EXIT
  psql "$server/postgres" -qc "create database \"$db\"" >/dev/null || fail "could not create database $db"
  port="${GRAPHQL_TOOLING_PORT:-$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')}"
  DATABASE_URL="$server/$db" "$bin" migrate >"$log" 2>&1 || fail "migrate failed (see $log)"
  DATABASE_URL="$server/$db" "$bin" seed >>"$log" 2>&1 || fail "seed failed (see $log)"
  DATABASE_URL="$server/$db" HOST=127.0.0.1 PORT="$port" APP_ENV=development "$bin" serve >>"$log" 2>&1 &
  pid=$!
  engine="http://127.0.0.1:$port"
  for _ in $(seq 1 100); do
    if node -e 'fetch(process.argv[1]).then(r=>process.exit(r.ok?0:1),()=>process.exit(1))' "$engine/health"; then
      break
    fi
    kill -0 "$pid" 2>/dev/null || fail "the engine exited (see $log)"
    sleep 0.2
  done
  echo "check-graphql-tooling: engine $bin on $engine (database $db)" >&2
fi

# Install (again) only when the pinned lock file changed.
mkdir -p "$dir"
if ! cmp -s "$src/package-lock.json" "$dir/package-lock.json" || [ ! -d "$dir/node_modules" ]; then
  echo "check-graphql-tooling: npm ci into $dir" >&2
  cp "$src/package.json" "$src/package-lock.json" "$dir/"
  # The real path: when target/ is a symlink (a clone sharing another checkout's build),
  # npm ci takes a prefix reached through it for a linked package missing from the lock
  # file ("Missing: graphql-tooling@ from lock file") and refuses to install.
  npm ci --prefix "$(realpath "$dir")" --no-audit --no-fund --loglevel=error >&2 || fail "npm ci failed"
fi
cp "$src/tsconfig.json" "$src/live-test.ts" "$dir/"

echo "check-graphql-tooling: graphql-codegen from docs/schema.graphql" >&2
rm -rf "$dir/generated" "$dir/dist"
(cd "$dir" && node_modules/.bin/graphql-codegen --config "$src/codegen.yml") >&2 || {
  echo "check-graphql-tooling: graphql-codegen failed" >&2; exit 1; }
for file in schema.ts operations.ts; do
  [ -s "$dir/generated/$file" ] || { echo "check-graphql-tooling: codegen wrote no $file" >&2; exit 1; }
done

echo "check-graphql-tooling: tsc (generated code + live test)" >&2
(cd "$dir" && node_modules/.bin/tsc -p tsconfig.json) || {
  echo "check-graphql-tooling: tsc failed" >&2; exit 1; }

token="$("$bin" token --role customer --sub "$customer")" || fail "arreglame token failed"
echo "check-graphql-tooling: live test against $engine" >&2
node "$dir/dist/live-test.js" "$engine" "$token" "$root"
