-- Identities are checked against the database at the door (issue: hardening). Customers get
-- the same "isActive" flag worker_profiles already has: a constant default, so on
-- PostgreSQL 11+ this is a metadata-only change (no table rewrite, no long lock).
alter table customers add column if not exists "isActive" boolean not null default true;

-- A candidate the dispatcher had to pass over for a reason about that candidate (the
-- worker's row vanished, a constraint refused the offer): recorded so the decision trail
-- says why, and so a restarted request actor does not try the same worker again.
create table dispatch_skips (
    id            bigint generated always as identity primary key,
    "requestId"   uuid not null references service_requests (id) on delete cascade,
    -- No foreign key: the usual reason for a skip is that the worker's row is gone.
    "workerId"    uuid not null,
    reason        text not null,
    "createdAt"   timestamptz not null default now()
);
create index dispatch_skips_request_id_idx on dispatch_skips ("requestId");
