-- Nothing to undo: migration 7's revert drops the column.
select 1;
