-- Status updates that are HOT (issue 13, item 5), part 1 of 5: the column the open-request
-- indexes key on. A transition rewrites a request's row; when no indexed column changes and
-- the page has room, PostgreSQL keeps the new version on the same page and touches no index
-- (a heap-only tuple). Indexes whose key or predicate holds `status` (or the offer deadline)
-- made every transition rewrite every index: 0 of 6 720 updates were HOT when the issue was
-- filed. The open requests are found by "closedAt" instead (migrations 9 and 10), set once,
-- when a request reaches COMPLETED, CANCELLED or UNASSIGNED: offers, rejections, expiries
-- and starts change no indexed column. Accepting (the assignee) and closing still do.
--
-- Every step takes its lock briefly (no table rewrite, no index build under a write lock):
-- a legacy database adopted in place keeps being written meanwhile (docs/migration.md).

-- When the request reached a terminal status (the first time: a dispute that cancels a
-- completed job keeps the completion's). Set by the engine's transition; an open request
-- never has it (the check), which is what lets the partial indexes stand for "open". Rows
-- closed by a writer that does not set it (the legacy dispatcher only offers and assigns)
-- stay in those indexes, and every query still filters on status: a row read, never a
-- wrong answer.
alter table service_requests add column if not exists "closedAt" timestamptz;
alter table service_requests add constraint service_requests_closed_at_check
    check ("closedAt" is null or status in ('COMPLETED', 'CANCELLED', 'UNASSIGNED')) not valid;
alter table service_requests validate constraint service_requests_closed_at_check;

-- Room on each page for the next versions of its rows (pages written from now on).
alter table service_requests set (fillfactor = 80);
