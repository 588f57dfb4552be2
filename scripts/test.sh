#!/usr/bin/env bash
# Quick-start command 2: prepare PostgreSQL and NATS, run the whole test suite, then the
# browser test of the ops dashboard (headless chromium; screenshot in target/artifacts/) and
# the TypeScript worker client's tests against a live engine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
eval "$(scripts/dev-env.sh)"
# Each test makes its own database; drop the ones earlier runs left behind.
psql "${DATABASE_URL%/*}/postgres" -Atqc "select datname from pg_database where datname like 'test\_%'" |
  while read -r db; do psql "${DATABASE_URL%/*}/postgres" -qc "drop database if exists \"$db\"" >/dev/null || true; done
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast "$@"
else
  cargo test --no-fail-fast "$@"
fi
if [ "${ARREGLAME_SKIP_E2E:-0}" != 1 ]; then
  # The ops dashboard in headless chromium (and a real Prometheus scraping the engine),
  # then the TypeScript worker client against a live engine (node's test runner).
  scripts/e2e-ops.sh
  clients/worker-ts/run-tests.sh
  # Standard GraphQL tooling against an engine of its own: graphql-codegen + tsc over
  # docs/schema.graphql, graphql-js's introspection query, the reference graphql-ws client.
  scripts/check-graphql-tooling.sh --own-engine
fi
