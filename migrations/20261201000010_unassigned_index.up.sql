-- no-transaction
-- HOT status updates, part 4 of 5. Requests that ended UNASSIGNED, by when (the ops page's
-- recent list). Built concurrently (no write lock).
create index concurrently if not exists service_requests_unassigned_closed_at_idx
    on service_requests ("closedAt") where "unassignedReason" is not null;
