//! One integration-test binary (one link step) for the whole engine, against a real
//! PostgreSQL started by `scripts/dev-env.sh`. Each test gets a fresh database.

mod dispatch;
mod foundation;
mod helpers;
