-- Gradual rollout (the guide's Phase 4): system_config's dispatch_rollout_percentage says
-- which share of requests this engine dispatches, by a bucket 0-99 of each request's id
-- (stable for the request's life). The engine computes the same bucket in Rust
-- (src/domain/rollout.rs; a test keeps the two equal); this function is for SQL: the legacy
-- dispatcher's "mine?" filter, the ops page's per-arm figures, an operator's checks.
create function arreglame_rollout_bucket(id uuid) returns integer
language sql immutable parallel safe as $$
    select (('x' || left(encode(sha256(convert_to(id::text, 'UTF8')), 'hex'), 8))::bit(32)::bigint % 100)::integer
$$;
