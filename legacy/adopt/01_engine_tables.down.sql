-- `if exists` throughout: the guide's rollback may already have dropped outbox_events and
-- system_config by hand.
drop table if exists worker_strikes;
drop table if exists dispatch_skips;
drop table if exists system_config;
drop function if exists system_config_notify();
drop table if exists outbox_events;
drop table if exists payouts;
drop table if exists offers;
drop function if exists service_requests_check_transition();
drop table if exists service_request_transitions;
drop table if exists extra_multipliers;
drop table if exists difficulty_multipliers;
drop table if exists service_categories;
drop table if exists cities;
