-- The engine's own tables, as migrations 1-4 leave them (same names, so the same
-- constraint and index names): none of them exists in the legacy database. Creating a
-- table that references service_requests or worker_profiles takes a short SHARE ROW
-- EXCLUSIVE lock on them; nothing here scans a legacy table.

create table cities (
    id                text primary key,
    name              text not null,
    country           text not null default 'AR',
    currency          text not null default 'ARS',
    timezone          text not null default 'America/Argentina/Buenos_Aires',
    "serviceArea"     jsonb not null,
    "isActive"        boolean not null default true,
    "createdAt"       timestamptz not null default now()
);

create table service_categories (
    code                    text primary key,
    name                    text not null,
    "baseRatePerSqmCents"   bigint not null check ("baseRatePerSqmCents" >= 0),
    "minimumPriceCents"     bigint not null check ("minimumPriceCents" >= 0),
    "requiredSkill"         text not null
);

create table difficulty_multipliers (
    id            serial primary key,
    level         text not null unique,
    multiplier    numeric(6, 3) not null check (multiplier > 0),
    description   text
);

create table extra_multipliers (
    id            serial primary key,
    code          text not null unique,
    name          text not null,
    multiplier    numeric(6, 3) not null check (multiplier > 0),
    description   text
);

-- The status machine's edges: migration 1, 2 (dispute after completion) and 4 (booked slots).
create table service_request_transitions (
    "fromStatus"  text not null,
    "toStatus"    text not null,
    primary key ("fromStatus", "toStatus")
);
insert into service_request_transitions ("fromStatus", "toStatus") values
    ('PENDING', 'OFFERING'), ('PENDING', 'UNASSIGNED'), ('PENDING', 'CANCELLED'),
    ('OFFERING', 'PENDING'), ('OFFERING', 'ASSIGNED'), ('OFFERING', 'CANCELLED'), ('OFFERING', 'UNASSIGNED'),
    ('ASSIGNED', 'IN_PROGRESS'), ('ASSIGNED', 'CANCELLED'),
    ('IN_PROGRESS', 'COMPLETED'),
    ('COMPLETED', 'CANCELLED'),
    ('SCHEDULED', 'PENDING'), ('SCHEDULED', 'CANCELLED'), ('ASSIGNED', 'PENDING');

-- The trigger itself is created by the status swap (step 7), once `status` is text.
create function service_requests_check_transition() returns trigger language plpgsql as $$
begin
    if new.status is distinct from old.status and not exists (
        select 1 from service_request_transitions
        where "fromStatus" = old.status and "toStatus" = new.status
    ) then
        raise exception 'illegal service request transition % -> %', old.status, new.status
            using errcode = 'check_violation', constraint = 'service_requests_status_transition_check';
    end if;
    return new;
end $$;

create table offers (
    id                uuid primary key default gen_random_uuid(),
    "requestId"       uuid not null references service_requests (id),
    "workerId"        uuid not null references worker_profiles (id),
    attempt           integer not null check (attempt >= 1),
    "sentAt"          timestamptz not null default now(),
    "expiresAt"       timestamptz not null,
    outcome           text,
    "respondedAt"     timestamptz,
    "rejectReason"    text,
    "distanceMeters"  double precision,
    "radiusMeters"    integer,
    "candidatesConsidered" integer,
    "candidateScores" jsonb,
    unique ("requestId", attempt),
    check ((outcome is null) = ("respondedAt" is null)),
    constraint offers_outcome_check
        check (outcome in ('ACCEPTED', 'REJECTED', 'EXPIRED', 'WITHDRAWN', 'RELEASED', 'NO_SHOW'))
);
create unique index offers_one_accepted_per_request_idx on offers ("requestId") where outcome = 'ACCEPTED';
create unique index offers_one_pending_per_worker_idx on offers ("workerId") where outcome is null;
create index offers_worker_id_sent_at_idx on offers ("workerId", "sentAt" desc);

create table payouts (
    id              uuid primary key default gen_random_uuid(),
    "requestId"     uuid not null unique references service_requests (id),
    "workerId"      uuid not null references worker_profiles (id),
    "amountCents"   bigint not null check ("amountCents" >= 0),
    currency        text not null default 'ARS',
    status          text not null default 'PENDING' check (status in ('PENDING', 'RELEASED', 'CANCELLED')),
    "releaseAt"     timestamptz not null,
    "releasedAt"    timestamptz,
    version         integer not null default 1,
    "createdAt"     timestamptz not null default now(),
    check ((status = 'RELEASED') = ("releasedAt" is not null))
);
create index payouts_pending_release_at_idx on payouts ("releaseAt") where status = 'PENDING';

create table outbox_events (
    id                  bigserial primary key,
    "aggregateType"     text not null,
    "aggregateId"       text not null,
    "aggregateVersion"  integer not null,
    type                text not null,
    payload             jsonb not null,
    processed           boolean not null default false,
    attempts            integer not null default 0,
    "lastError"         text,
    "parkedAt"          timestamptz,
    "createdAt"         timestamptz not null default now(),
    "processedAt"       timestamptz,
    unique ("aggregateType", "aggregateId", "aggregateVersion")
);
create index outbox_events_processed_idx on outbox_events (processed);
create index outbox_events_unprocessed_id_idx on outbox_events (id) where processed = false;
create index outbox_events_created_at_idx on outbox_events ("createdAt");
create index outbox_events_type_processed_idx on outbox_events (type, processed);

create table system_config (
    key           text primary key,
    value         text not null,
    description   text,
    "updatedAt"   timestamptz not null default now()
);
create function system_config_notify() returns trigger language plpgsql as $$
begin
    perform pg_notify('system_config_changed', coalesce(new.key, old.key));
    return null;
end $$;
create trigger system_config_changed
    after insert or update or delete on system_config
    for each row execute function system_config_notify();

create table dispatch_skips (
    id            bigint generated always as identity primary key,
    "requestId"   uuid not null references service_requests (id) on delete cascade,
    "workerId"    uuid not null,
    reason        text not null,
    "createdAt"   timestamptz not null default now()
);
create index dispatch_skips_request_id_idx on dispatch_skips ("requestId");

create table worker_strikes (
    id            bigint generated always as identity primary key,
    "workerId"    uuid not null references worker_profiles (id) on delete cascade,
    "requestId"   uuid not null references service_requests (id) on delete cascade,
    kind          text not null check (kind in ('CANCELLED', 'NO_SHOW')),
    reason        text,
    "createdAt"   timestamptz not null default now()
);
create index worker_strikes_worker_id_created_at_idx on worker_strikes ("workerId", "createdAt" desc);
