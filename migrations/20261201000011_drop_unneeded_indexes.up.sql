-- HOT status updates, part 5 of 5: the indexes no query needs (each checked against every
-- statement in src/store; a DROP INDEX locks the table only for the catalog change):
-- ("status") alone: the guide's status distribution query reads the whole table anyway;
-- (status, "workerTimeoutAt") and ("cityId", status): replaced by migration 9's index;
-- the booked-slot index: no query filters on "scheduledStart" with the assignee;
-- on outbox_events, (processed), (type, processed) and ("createdAt"): the relay reads
-- through the partial index of unprocessed rows (outbox_events_unprocessed_id_idx), the lag
-- figure too; nothing reads the processed history by these columns. Each cost an index
-- entry on every insert and on every mark.
drop index if exists service_requests_status_idx;
drop index if exists service_requests_status_worker_timeout_at_idx;
drop index if exists service_requests_city_id_status_idx;
drop index if exists service_requests_assigned_worker_slot_idx;
drop index if exists outbox_events_processed_idx;
drop index if exists outbox_events_type_processed_idx;
drop index if exists outbox_events_created_at_idx;
