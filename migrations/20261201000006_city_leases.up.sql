-- Scale-out (docs/scale-out.md): which engine node owns each city, and the fencing epoch
-- its writes carry. A node wins a city in the replicated NATS KV bucket `city_owner`; it
-- then bumps this row's epoch, and the request actors it runs for the city write only
-- while the epoch they carry is still the row's (service_requests transitions check it in
-- the same statement). A node that lost its lease and wakes up later writes nothing.
--
-- The epoch is counted here, in the database that is the truth, rather than taken from
-- the KV revision: a KV bucket lost with its NATS data (or recreated) starts its revisions
-- again, and a fence must never go backwards. The revision is kept beside it for the ops
-- page and the drill.
create table city_leases (
    "cityId" text primary key references cities(id),
    epoch bigint not null check (epoch > 0),
    "nodeId" text not null check (length("nodeId") between 1 and 200),
    "kvRevision" bigint not null,
    "acquiredAt" timestamptz not null default now(),
    "renewedAt" timestamptz not null default now()
);
