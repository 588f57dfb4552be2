-- The schema the Arreglame Ya operators know from the migration guide: its table names,
-- its camelCase column names (quoted, as Prisma wrote them) and its indexes. Columns the
-- dispatch engine adds are nullable or defaulted, so rows written by the old system stay valid.

create table cities (
    id                text primary key,               -- slug, e.g. 'buenos-aires'
    name              text not null,
    country           text not null default 'AR',
    currency          text not null default 'ARS',
    timezone          text not null default 'America/Argentina/Buenos_Aires',
    -- Service area as a GeoJSON Polygon in WGS84 lon/lat. Kept as JSON rather than PostGIS
    -- so the engine needs nothing beyond stock PostgreSQL; the engine checks containment.
    "serviceArea"     jsonb not null,
    "isActive"        boolean not null default true,
    "createdAt"       timestamptz not null default now()
);

create table customers (
    id                uuid primary key default gen_random_uuid(),
    name              text not null,
    email             text unique,
    phone             text,
    "createdAt"       timestamptz not null default now()
);

create table worker_profiles (
    id                uuid primary key default gen_random_uuid(),
    name              text not null,
    phone             text,
    -- No foreign key: the guide backfills legacy rows with a city slug before cities exist.
    "cityId"          text,
    "lastActiveAt"    timestamptz,
    "lastLatitude"    double precision check ("lastLatitude" between -90 and 90),
    "lastLongitude"   double precision check ("lastLongitude" between -180 and 180),
    skills            text[] not null default '{}',
    rating            numeric(3, 2) not null default 5.00 check (rating between 0 and 5),
    "isActive"        boolean not null default true,
    "createdAt"       timestamptz not null default now(),
    "updatedAt"       timestamptz not null default now()
);
create index worker_profiles_city_id_idx on worker_profiles ("cityId");
create index worker_profiles_last_active_at_idx on worker_profiles ("lastActiveAt");
create index worker_profiles_city_id_last_active_at_idx on worker_profiles ("cityId", "lastActiveAt");

create table service_categories (
    code                    text primary key,         -- e.g. 'lawn_mowing'
    name                    text not null,
    "baseRatePerSqmCents"   bigint not null check ("baseRatePerSqmCents" >= 0),
    "minimumPriceCents"     bigint not null check ("minimumPriceCents" >= 0),
    "requiredSkill"         text not null
);

create table difficulty_multipliers (
    id            serial primary key,
    level         text not null unique,                -- EASY, MEDIUM, HARD, EXTREME
    multiplier    numeric(6, 3) not null check (multiplier > 0),
    description   text
);

create table extra_multipliers (
    id            serial primary key,
    code          text not null unique,                -- e.g. 'tall_grass'
    name          text not null,
    multiplier    numeric(6, 3) not null check (multiplier > 0),
    description   text
);

create table service_requests (
    id                      uuid primary key default gen_random_uuid(),
    "customerId"            uuid references customers (id),
    -- No foreign key, for the same reason as worker_profiles."cityId".
    "cityId"                text,
    status                  text not null default 'PENDING' check (status in
                              ('PENDING', 'OFFERING', 'ASSIGNED', 'IN_PROGRESS', 'COMPLETED', 'CANCELLED', 'UNASSIGNED')),
    -- Optimistic concurrency: every transition is `... where id = $1 and version = $2`.
    version                 integer not null default 1,
    "assignmentAttempts"    integer not null default 0 check ("assignmentAttempts" >= 0),
    "workerTimeoutAt"       timestamptz,
    "assignedWorkerId"      uuid references worker_profiles (id),
    latitude                double precision check (latitude between -90 and 90),
    longitude               double precision check (longitude between -180 and 180),
    address                 text,
    description             text,
    "squareMeters"          double precision check ("squareMeters" > 0),
    "imageRef"              text,                     -- sha256 of the uploaded photo
    "serviceCategory"       text references service_categories (code),
    "difficultyLevel"       text,
    extras                  text[] not null default '{}',
    currency                text not null default 'ARS',
    -- Money in integer centavos. The total always splits exactly into net and fee.
    "priceTotalCents"       bigint check ("priceTotalCents" >= 0),
    "workerNetCents"        bigint check ("workerNetCents" >= 0),
    "platformFeeCents"      bigint check ("platformFeeCents" >= 0),
    "pricingEngine"         text,                     -- 'gemini' or 'rules'
    "idempotencyKey"        text,
    "cancelledAt"           timestamptz,
    "cancelledBy"           text check ("cancelledBy" in ('CUSTOMER', 'OPS', 'SYSTEM')),
    "cancellationReason"    text,
    "cancellationFeeCents"  bigint check ("cancellationFeeCents" >= 0),
    "unassignedReason"      text,
    "assignedAt"            timestamptz,
    "startedAt"             timestamptz,
    "completedAt"           timestamptz,
    "createdAt"             timestamptz not null default now(),
    "updatedAt"             timestamptz not null default now(),
    constraint service_requests_price_split_check
        check ("priceTotalCents" is null or "priceTotalCents" = "workerNetCents" + "platformFeeCents"),
    constraint service_requests_assignee_check
        check (status not in ('ASSIGNED', 'IN_PROGRESS', 'COMPLETED') or "assignedWorkerId" is not null),
    constraint service_requests_offer_deadline_check
        check (status <> 'OFFERING' or "workerTimeoutAt" is not null)
);
create unique index service_requests_customer_idempotency_key_idx
    on service_requests ("customerId", "idempotencyKey") where "idempotencyKey" is not null;
create index service_requests_status_idx on service_requests (status);
create index service_requests_status_worker_timeout_at_idx on service_requests (status, "workerTimeoutAt");
create index service_requests_city_id_status_idx on service_requests ("cityId", status);
create index service_requests_customer_id_created_at_idx on service_requests ("customerId", "createdAt" desc, id desc);
create index service_requests_assigned_worker_id_idx on service_requests ("assignedWorkerId");

-- The status machine, enforced by the database as well as by the engine (src/domain/status.rs
-- holds the same table). Any update that changes status must follow an allowed edge.
create table service_request_transitions (
    "fromStatus"  text not null,
    "toStatus"    text not null,
    primary key ("fromStatus", "toStatus")
);
insert into service_request_transitions ("fromStatus", "toStatus") values
    ('PENDING', 'OFFERING'), ('PENDING', 'UNASSIGNED'), ('PENDING', 'CANCELLED'),
    ('OFFERING', 'PENDING'), ('OFFERING', 'ASSIGNED'), ('OFFERING', 'CANCELLED'), ('OFFERING', 'UNASSIGNED'),
    ('ASSIGNED', 'IN_PROGRESS'), ('ASSIGNED', 'CANCELLED'),
    ('IN_PROGRESS', 'COMPLETED');

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
create trigger service_requests_status_transition
    before update of status on service_requests
    for each row execute function service_requests_check_transition();

-- One row per offer made to a worker.
create table offers (
    id                uuid primary key default gen_random_uuid(),
    "requestId"       uuid not null references service_requests (id),
    "workerId"        uuid not null references worker_profiles (id),
    attempt           integer not null check (attempt >= 1),
    "sentAt"          timestamptz not null default now(),
    "expiresAt"       timestamptz not null,
    outcome           text check (outcome in ('ACCEPTED', 'REJECTED', 'EXPIRED', 'WITHDRAWN')),
    "respondedAt"     timestamptz,
    "rejectReason"    text,
    "distanceMeters"  double precision,
    "radiusMeters"    integer,
    "candidatesConsidered" integer,
    unique ("requestId", attempt),
    check ((outcome is null) = ("respondedAt" is null))
);
-- No request ever holds two accepted offers, nor two pending ones; no worker holds two pending offers.
create unique index offers_one_accepted_per_request_idx on offers ("requestId") where outcome = 'ACCEPTED';
create unique index offers_one_pending_per_request_idx on offers ("requestId") where outcome is null;
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
    "aggregateType"     text not null,                -- 'service_request', 'payout'
    "aggregateId"       text not null,
    -- The aggregate's version after the transition: one outbox row per transition, enforced.
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

-- Running engines reload configuration without a restart: every change is announced.
create function system_config_notify() returns trigger language plpgsql as $$
begin
    perform pg_notify('system_config_changed', coalesce(new.key, old.key));
    return null;
end $$;
create trigger system_config_changed
    after insert or update or delete on system_config
    for each row execute function system_config_notify();
