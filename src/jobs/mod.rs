//! Background sweeps: the worker-assignment backstop and the payout release, on cron
//! schedules read from `system_config`.

pub mod cron;
pub mod outbox_relay;
