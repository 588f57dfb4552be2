-- Home-services dispatch (issue: booked slots, parallel offers, ranked candidates, worker
-- cancellations and no-shows). Every change is metadata-only or validated without a long
-- lock: new columns have no default, and the widened CHECK constraints are added NOT VALID
-- and validated afterwards (VALIDATE takes only a SHARE UPDATE EXCLUSIVE lock).

-- A booked request carries its slot; a "now" request has neither end.
alter table service_requests
    add column if not exists "scheduledStart" timestamptz,
    add column if not exists "scheduledEnd" timestamptz;
alter table service_requests add constraint service_requests_slot_check
    check (("scheduledStart" is null) = ("scheduledEnd" is null)
           and ("scheduledEnd" is null or "scheduledEnd" > "scheduledStart")) not valid;
alter table service_requests validate constraint service_requests_slot_check;

-- SCHEDULED: booked, waiting for its dispatch time (scheduledStart - dispatch_lead_minutes).
alter table service_requests drop constraint service_requests_status_check;
alter table service_requests add constraint service_requests_status_check check (status in
    ('SCHEDULED', 'PENDING', 'OFFERING', 'ASSIGNED', 'IN_PROGRESS', 'COMPLETED', 'CANCELLED', 'UNASSIGNED')) not valid;
alter table service_requests validate constraint service_requests_status_check;
insert into service_request_transitions ("fromStatus", "toStatus") values
    ('SCHEDULED', 'PENDING'), ('SCHEDULED', 'CANCELLED'),
    -- The assigned worker cancels before the job starts, or does not show up: back to dispatch.
    ('ASSIGNED', 'PENDING');

-- An accepted offer the worker later gave up: RELEASED (cancel_assignment) or NO_SHOW. Only
-- the current assignment stays ACCEPTED, so offers_one_accepted_per_request_idx keeps
-- guaranteeing one assignee per request through any number of re-dispatches.
alter table offers drop constraint offers_outcome_check;
alter table offers add constraint offers_outcome_check
    check (outcome in ('ACCEPTED', 'REJECTED', 'EXPIRED', 'WITHDRAWN', 'RELEASED', 'NO_SHOW')) not valid;
alter table offers validate constraint offers_outcome_check;
-- Parallel offers: a request may hold several pending offers at once (one per worker; a
-- worker still holds at most one pending offer, offers_one_pending_per_worker_idx).
drop index if exists offers_one_pending_per_request_idx;
-- The decision trail: each ranked candidate's score and its parts, as the city scored them.
alter table offers add column if not exists "candidateScores" jsonb;

-- What counts against a worker in ranking: a cancellation after accepting, a no-show.
create table worker_strikes (
    id            bigint generated always as identity primary key,
    "workerId"    uuid not null references worker_profiles (id) on delete cascade,
    "requestId"   uuid not null references service_requests (id) on delete cascade,
    kind          text not null check (kind in ('CANCELLED', 'NO_SHOW')),
    reason        text,
    "createdAt"   timestamptz not null default now()
);
create index worker_strikes_worker_id_created_at_idx on worker_strikes ("workerId", "createdAt" desc);
-- A worker's booked jobs, for the overlap check when they come online.
create index service_requests_assigned_worker_slot_idx
    on service_requests ("assignedWorkerId", "scheduledStart")
    where "scheduledStart" is not null and status in ('ASSIGNED', 'IN_PROGRESS');
