-- The guide's rollback may have dropped outbox_events already.
do $$
begin
    if to_regclass('public.outbox_events') is not null then
        create index if not exists outbox_events_created_at_idx on outbox_events ("createdAt");
        create index if not exists outbox_events_type_processed_idx on outbox_events (type, processed);
        create index if not exists outbox_events_processed_idx on outbox_events (processed);
    end if;
end $$;
create index if not exists service_requests_assigned_worker_slot_idx
    on service_requests ("assignedWorkerId", "scheduledStart")
    where "scheduledStart" is not null and status in ('ASSIGNED', 'IN_PROGRESS');
create index if not exists service_requests_city_id_status_idx on service_requests ("cityId", status);
create index if not exists service_requests_status_worker_timeout_at_idx
    on service_requests (status, "workerTimeoutAt");
create index if not exists service_requests_status_idx on service_requests (status);
