-- The engine's indexes on the legacy tables, built CONCURRENTLY (no lock that stops a
-- writer; each statement runs on its own, outside a transaction). The status indexes are
-- built on "engineStatus" and renamed when step 7 makes it `status`.
create unique index concurrently if not exists service_requests_customer_idempotency_key_idx
    on service_requests ("customerId", "idempotencyKey") where "idempotencyKey" is not null;
create index concurrently if not exists service_requests_engine_status_idx
    on service_requests ("engineStatus");
create index concurrently if not exists service_requests_status_worker_timeout_at_idx
    on service_requests ("engineStatus", "workerTimeoutAt");
create index concurrently if not exists service_requests_city_id_status_idx
    on service_requests ("cityId", "engineStatus");
create index concurrently if not exists service_requests_customer_id_created_at_idx
    on service_requests ("customerId", "createdAt" desc, id desc);
create index concurrently if not exists service_requests_assigned_worker_id_idx
    on service_requests ("assignedWorkerId");
create index concurrently if not exists service_requests_assigned_worker_slot_idx
    on service_requests ("assignedWorkerId", "scheduledStart")
    where "scheduledStart" is not null and "engineStatus" in ('ASSIGNED', 'IN_PROGRESS');
create index concurrently if not exists worker_profiles_city_id_idx on worker_profiles ("cityId");
create index concurrently if not exists worker_profiles_last_active_at_idx on worker_profiles ("lastActiveAt");
create index concurrently if not exists worker_profiles_city_id_last_active_at_idx
    on worker_profiles ("cityId", "lastActiveAt");
create unique index concurrently if not exists customers_email_key on customers (email);
