#!/usr/bin/env bash
# Builds and tests the TypeScript worker client against a live engine that the tests start
# themselves (a fresh database, migrate, seed, `serve` on a free port; dropped afterwards).
#
#   DATABASE_URL=... JWT_SECRET=... [NATS_URL=...] [ARREGLAME_BIN=path] clients/worker-ts/run-tests.sh
#
# Needs node >= 20 and npm. ARREGLAME_BIN defaults to <repo>/target/debug/arreglame.
# Steps: npm ci (pinned by package-lock.json), tsc, the modelina check of docs/asyncapi.yaml
# (every generated model named), then node's test runner.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$here"

command -v node >/dev/null || { echo "worker-ts: node is required" >&2; exit 2; }
command -v npm >/dev/null || { echo "worker-ts: npm is required" >&2; exit 2; }
major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$major" -ge 20 ] || { echo "worker-ts: node >= 20 is required (found $(node --version))" >&2; exit 2; }
: "${DATABASE_URL:?worker-ts: DATABASE_URL must be set (eval \"\$(scripts/dev-env.sh)\")}"
: "${JWT_SECRET:?worker-ts: JWT_SECRET must be set (eval \"\$(scripts/dev-env.sh)\")}"
export ARREGLAME_BIN="${ARREGLAME_BIN:-$root/target/debug/arreglame}"
[ -x "$ARREGLAME_BIN" ] || { echo "worker-ts: engine binary $ARREGLAME_BIN not found (build it, or set ARREGLAME_BIN)" >&2; exit 2; }

echo "worker-ts: npm ci" >&2
npm ci --no-audit --no-fund --loglevel=error
echo "worker-ts: tsc" >&2
npx --no-install tsc -p tsconfig.json
echo "worker-ts: modelina models from docs/asyncapi.yaml" >&2
node scripts/check-modelina.js "$root/docs/asyncapi.yaml" --out generated
npx --no-install tsc --noEmit --strict --skipLibCheck generated/models.ts
echo "worker-ts: tests against a live engine ($ARREGLAME_BIN)" >&2
node --test --test-concurrency=1 dist/test/*.test.js
