-- no-transaction
-- HOT status updates, part 2 of 5: "closedAt" for the requests that closed before it
-- existed. The table is walked in primary-key order, 10 000 rows per transaction (each
-- commit releases its row locks: a writer of an old row waits for one batch at most).
-- Re-running it continues where it stopped.
do $$
declare
    -- Below every id but the nil one, which the first statement takes.
    after uuid := '00000000-0000-0000-0000-000000000000';
    upto uuid;
begin
    update service_requests set "closedAt" = coalesce("completedAt", "cancelledAt", "updatedAt")
    where id = after and "closedAt" is null and status in ('COMPLETED', 'CANCELLED', 'UNASSIGNED');
    loop
        -- The last id of the next batch (no max(uuid) before PostgreSQL 16).
        select id into upto from (
            select id from service_requests where id > after order by id limit 10000) batch
        order by id desc limit 1;
        exit when not found;
        update service_requests set "closedAt" = coalesce("completedAt", "cancelledAt", "updatedAt")
        where id > after and id <= upto
          and "closedAt" is null and status in ('COMPLETED', 'CANCELLED', 'UNASSIGNED');
        after := upto;
        commit;
    end loop;
end $$;
