-- no-transaction
-- HOT status updates, part 3 of 5. The open requests by city, oldest first: recovery of a
-- city's actors, the stalled-request sweep, the offer-deadline backstop, the ops page's
-- attention list, the placement of legacy requests. Built concurrently (no write lock).
create index concurrently if not exists service_requests_open_city_id_idx
    on service_requests ("cityId", "createdAt") where "closedAt" is null;
