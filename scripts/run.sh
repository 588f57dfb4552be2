#!/usr/bin/env bash
# Quick-start command 1: prepare PostgreSQL, migrate, seed, and run the engine on :3000.
# Extra arguments go to `arreglame serve` (for example `--demo-fleet 50`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
eval "$(scripts/dev-env.sh)"
# The guide's habits: `grep ERROR logs/app.log` and friends work after `make run`.
export LOG_FILE="${LOG_FILE:-logs/app.log}"
cargo build --release --bin arreglame
bin=target/release/arreglame
"$bin" migrate
"$bin" seed
exec "$bin" serve "$@"
