-- One service request's whole life as the engine at adb545c sent it (issue 13's "today"):
-- the fixed baseline that `scripts/bench-e2e.sh` runs beside the engine, on the same
-- PostgreSQL, in the same run. One pgbench "transaction" is one request: created, read
-- back by its actor, offered, accepted, started, completed, and its five outbox rows
-- relayed. Statement texts are the engine's (pg_stat_statements at adb545c, see
-- docs/benchmarks.md), bind values that were constants written as literals; each
-- transition had its own BEGIN/COMMIT, and a coalesced `pg_notify` followed most commits
-- (about four per request).
--
-- Deliberately left out, so the baseline is if anything faster than the engine it stands
-- for: sqlx's hidden pings (about 20 per request), the relay's empty claim transactions
-- (half of its claims at light load) and the GraphQL layer's customer check.
--
-- Variables: -D customer=<uuid> -D prefix=<worker name prefix> -D ready=0. Each client
-- drives its own worker (a worker holds at most one pending offer), looked up once.
\if :ready = 0
select id as wid from worker_profiles where name = cast(:prefix as text) || cast(:client_id as text) \gset
\set ready 1
\endif
begin;
insert into service_requests
     ("customerId", "cityId", latitude, longitude, address, description, "squareMeters",
      "imageRef", "serviceCategory", "difficultyLevel", extras, currency,
      "priceTotalCents", "workerNetCents", "platformFeeCents", "pricingEngine", "idempotencyKey",
      "scheduledStart", "scheduledEnd", status)
   values (:customer, 'buenos-aires', -34.6037, -58.3816, 'Av. Corrientes 1234', 'Cortar el pasto del fondo',
           120, null, 'lawn_mowing', 'MEDIUM', '{}', 'ARS', 2250000, 1912500, 337500, 'rules', null,
           null, null, 'PENDING')
   on conflict ("customerId", "idempotencyKey") where "idempotencyKey" is not null do nothing
   returning * \gset
insert into outbox_events ("aggregateType", "aggregateId", "aggregateVersion", type, payload)
   values ('service_request', :id, :version, 'ServiceRequestCreated', jsonb_build_object(
     'requestId', cast(:id as text), 'customerId', cast(:customerId as text),
     'cityId', cast(:cityId as text), 'status', 'PENDING', 'version', cast(:version as int),
     'assignmentAttempts', 0, 'workerTimeoutAt', null::text, 'assignedWorkerId', null::text,
     'priceTotalCents', 2250000, 'workerNetCents', 1912500, 'platformFeeCents', 337500,
     'currency', 'ARS', 'serviceCategory', 'lawn_mowing', 'latitude', -34.6037, 'longitude', -58.3816))
   returning id;
commit;
select pg_notify('outbox_events', 'pgbench');
select * from service_requests where id = :id;
select "workerId" from offers where "requestId" = :id union select "workerId" from dispatch_skips where "requestId" = :id;
begin;
update service_requests set
     status = 'OFFERING', version = version + 1,
     "assignmentAttempts" = "assignmentAttempts" + 1,
     "workerTimeoutAt" = now() + interval '60 seconds',
     "assignedWorkerId" = coalesce(null::uuid, "assignedWorkerId"),
     "assignedAt" = case when 'OFFERING' = 'ASSIGNED' then now() else "assignedAt" end,
     "startedAt" = case when 'OFFERING' = 'IN_PROGRESS' then now() else "startedAt" end,
     "completedAt" = case when 'OFFERING' = 'COMPLETED' then now() else "completedAt" end,
     "cancelledAt" = case when 'OFFERING' = 'CANCELLED' then now() else "cancelledAt" end,
     "cancelledBy" = coalesce(null::text, "cancelledBy"),
     "cancellationReason" = coalesce(null::text, "cancellationReason"),
     "cancellationFeeCents" = coalesce(null::bigint, "cancellationFeeCents"),
     "unassignedReason" = coalesce(null::text, "unassignedReason"),
     "updatedAt" = now()
   where id = :id and version = :version
   returning * \gset
insert into offers (id, "requestId", "workerId", attempt, "expiresAt", "distanceMeters",
                    "radiusMeters", "candidatesConsidered", "candidateScores")
   values (gen_random_uuid(), :id, :wid, :assignmentAttempts, :workerTimeoutAt, 850, 2000, 3,
           '[{"score": 0.91, "distance": 0.8, "rating": 0.96}]')
   returning id as offer_id \gset
insert into outbox_events ("aggregateType", "aggregateId", "aggregateVersion", type, payload)
   values ('service_request', :id, :version, 'OfferSent', jsonb_build_object(
     'requestId', cast(:id as text), 'customerId', cast(:customerId as text),
     'cityId', cast(:cityId as text), 'status', 'OFFERING', 'version', cast(:version as int),
     'assignmentAttempts', cast(:assignmentAttempts as int),
     'workerTimeoutAt', cast(:workerTimeoutAt as text), 'assignedWorkerId', null::text,
     'offerId', cast(:offer_id as text), 'workerId', cast(:wid as text),
     'attempt', cast(:assignmentAttempts as int), 'expiresAt', cast(:workerTimeoutAt as text),
     'distanceMeters', 850.0, 'radiusMeters', 2000))
   returning id;
commit;
select pg_notify('outbox_events', 'pgbench');
begin;
update service_requests set
     status = 'ASSIGNED', version = version + 1,
     "assignmentAttempts" = "assignmentAttempts" + 0,
     "workerTimeoutAt" = null,
     "assignedWorkerId" = coalesce(cast(:wid as uuid), "assignedWorkerId"),
     "assignedAt" = case when 'ASSIGNED' = 'ASSIGNED' then now() else "assignedAt" end,
     "startedAt" = case when 'ASSIGNED' = 'IN_PROGRESS' then now() else "startedAt" end,
     "completedAt" = case when 'ASSIGNED' = 'COMPLETED' then now() else "completedAt" end,
     "cancelledAt" = case when 'ASSIGNED' = 'CANCELLED' then now() else "cancelledAt" end,
     "cancelledBy" = coalesce(null::text, "cancelledBy"),
     "cancellationReason" = coalesce(null::text, "cancellationReason"),
     "cancellationFeeCents" = coalesce(null::bigint, "cancellationFeeCents"),
     "unassignedReason" = coalesce(null::text, "unassignedReason"),
     "updatedAt" = now()
   where id = :id and version = :version
   returning * \gset
update offers set outcome = 'ACCEPTED', "respondedAt" = now(), "rejectReason" = null
   where "requestId" = :id and (cast(:offer_id as uuid) is null or id = cast(:offer_id as uuid))
     and outcome is null
   returning "workerId";
insert into outbox_events ("aggregateType", "aggregateId", "aggregateVersion", type, payload)
   values ('service_request', :id, :version, 'OfferAccepted', jsonb_build_object(
     'requestId', cast(:id as text), 'customerId', cast(:customerId as text),
     'cityId', cast(:cityId as text), 'status', 'ASSIGNED', 'version', cast(:version as int),
     'assignmentAttempts', cast(:assignmentAttempts as int),
     'workerTimeoutAt', null::text, 'assignedWorkerId', cast(:wid as text),
     'offerId', cast(:offer_id as text), 'workerId', cast(:wid as text)))
   returning id;
commit;
select pg_notify('outbox_events', 'pgbench');
begin;
update service_requests set
     status = 'IN_PROGRESS', version = version + 1,
     "assignmentAttempts" = "assignmentAttempts" + 0,
     "workerTimeoutAt" = null,
     "assignedWorkerId" = coalesce(null::uuid, "assignedWorkerId"),
     "assignedAt" = case when 'IN_PROGRESS' = 'ASSIGNED' then now() else "assignedAt" end,
     "startedAt" = case when 'IN_PROGRESS' = 'IN_PROGRESS' then now() else "startedAt" end,
     "completedAt" = case when 'IN_PROGRESS' = 'COMPLETED' then now() else "completedAt" end,
     "cancelledAt" = case when 'IN_PROGRESS' = 'CANCELLED' then now() else "cancelledAt" end,
     "cancelledBy" = coalesce(null::text, "cancelledBy"),
     "cancellationReason" = coalesce(null::text, "cancellationReason"),
     "cancellationFeeCents" = coalesce(null::bigint, "cancellationFeeCents"),
     "unassignedReason" = coalesce(null::text, "unassignedReason"),
     "updatedAt" = now()
   where id = :id and version = :version
   returning * \gset
insert into outbox_events ("aggregateType", "aggregateId", "aggregateVersion", type, payload)
   values ('service_request', :id, :version, 'JobStarted', jsonb_build_object(
     'requestId', cast(:id as text), 'customerId', cast(:customerId as text),
     'cityId', cast(:cityId as text), 'status', 'IN_PROGRESS', 'version', cast(:version as int),
     'assignmentAttempts', cast(:assignmentAttempts as int),
     'workerTimeoutAt', null::text, 'assignedWorkerId', cast(:wid as text)))
   returning id;
commit;
begin;
update service_requests set
     status = 'COMPLETED', version = version + 1,
     "assignmentAttempts" = "assignmentAttempts" + 0,
     "workerTimeoutAt" = null,
     "assignedWorkerId" = coalesce(null::uuid, "assignedWorkerId"),
     "assignedAt" = case when 'COMPLETED' = 'ASSIGNED' then now() else "assignedAt" end,
     "startedAt" = case when 'COMPLETED' = 'IN_PROGRESS' then now() else "startedAt" end,
     "completedAt" = case when 'COMPLETED' = 'COMPLETED' then now() else "completedAt" end,
     "cancelledAt" = case when 'COMPLETED' = 'CANCELLED' then now() else "cancelledAt" end,
     "cancelledBy" = coalesce(null::text, "cancelledBy"),
     "cancellationReason" = coalesce(null::text, "cancellationReason"),
     "cancellationFeeCents" = coalesce(null::bigint, "cancellationFeeCents"),
     "unassignedReason" = coalesce(null::text, "unassignedReason"),
     "updatedAt" = now()
   where id = :id and version = :version
   returning * \gset
insert into payouts ("requestId", "workerId", "amountCents", currency, "releaseAt")
   values (:id, :wid, 1912500, 'ARS', now() + interval '48 hours')
   returning id;
insert into outbox_events ("aggregateType", "aggregateId", "aggregateVersion", type, payload)
   values ('service_request', :id, :version, 'JobCompleted', jsonb_build_object(
     'requestId', cast(:id as text), 'customerId', cast(:customerId as text),
     'cityId', cast(:cityId as text), 'status', 'COMPLETED', 'version', cast(:version as int),
     'assignmentAttempts', cast(:assignmentAttempts as int),
     'workerTimeoutAt', null::text, 'assignedWorkerId', cast(:wid as text),
     'workerNetCents', 1912500))
   returning id;
commit;
select pg_notify('outbox_events', 'pgbench');
-- The relay: one batch (its claim, the mark after the broker's acks) for the five rows a
-- request wrote (or whatever is oldest and not locked by another client; none at times).
-- At adb545c's own light load it made one batch per row plus as many empty claims; one
-- batch per request is the kinder replay.
begin;
select coalesce(array_agg(id), '{}') as claimed, json_agg(payload) as payloads from (
  select id, "aggregateType", "aggregateId", "aggregateVersion", type, payload, processed, attempts, "createdAt"
    from outbox_events
   where processed = false and "parkedAt" is null and id <> all('{}'::bigint[])
   order by id
   limit 5
   for update skip locked) batch \gset
update outbox_events set processed = true, "processedAt" = statement_timestamp()
   where id = any(cast(:claimed as bigint[]));
commit;
