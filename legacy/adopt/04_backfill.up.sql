-- Batches of the backfill: each statement takes the rows after $1 in id order (at most $2 of
-- them), updates them in their own short transaction and answers the last id it took (null
-- once there are none left). Keyset batches: every batch is an index range scan, whatever
-- the table's size; row locks only, held for one batch. Statements are separated by a line
-- holding only `-- batch`.

-- The engine's columns of each legacy request: status, assignee, assignment time and the
-- price in centavos (the legacy pesos times 100; the fee never above the total).
with batch as materialized (
    select id from service_requests where id > $1 order by id limit $2
), updated as (
    update service_requests r set
        "engineStatus" = arreglame_engine_status(r.status, r."workerId" is not null),
        "assignedWorkerId" = r."workerId",
        "assignedAt" = coalesce(r."assignedAt", case when r."workerId" is not null then r."acceptedAt" end),
        "priceTotalCents" = coalesce(r."priceTotalCents", round(r."totalPrice" * 100)::bigint),
        "platformFeeCents" = coalesce(r."platformFeeCents",
            least(round(r."platformFee" * 100), round(r."totalPrice" * 100))::bigint),
        "workerNetCents" = coalesce(r."workerNetCents", round(r."totalPrice" * 100)::bigint
            - least(round(r."platformFee" * 100), round(r."totalPrice" * 100))::bigint)
    from batch where r.id = batch.id
    returning r.id
)
select (select id from batch order by id desc limit 1);
-- batch
-- A worker's last known position, as the engine names it.
with batch as materialized (
    select id from worker_profiles where id > $1 order by id limit $2
), updated as (
    update worker_profiles w set
        "lastLatitude" = case when w.latitude between -90 and 90 then w.latitude end,
        "lastLongitude" = case when w.longitude between -180 and 180 then w.longitude end,
        "lastActiveAt" = w."lastLocationUpdate" at time zone 'utc'
    from batch where w.id = batch.id and w."lastActiveAt" is null
    returning w.id
)
select (select id from batch order by id desc limit 1);
