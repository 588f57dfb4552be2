//! One integration-test binary (one link step) for the whole engine, against a real
//! PostgreSQL (and NATS) started by `scripts/dev-env.sh`. Each test gets a fresh database.

mod api;
mod cluster;
mod dispatch;
mod foundation;
mod gateway;
mod hardening;
mod helpers;
mod home_services;
mod layers;
mod migration;
mod ops;
mod outbox;
mod pricing;
mod routing;
mod sim;
mod traces;
mod write_path;
