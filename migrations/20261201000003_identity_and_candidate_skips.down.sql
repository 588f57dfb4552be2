drop table if exists dispatch_skips;
alter table customers drop column if exists "isActive";
