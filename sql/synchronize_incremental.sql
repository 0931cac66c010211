-- synchronize_incremental: what a change file (insert / update / delete per row) does to a table.
-- Grain: one row per key named in the file whose command changes something or deserves a warning.
-- Inputs (views built per entity or link by the task):
--   sync_staged(_key, _values, _command)  the change file; _command is insert, update or delete
--   sync_current(_key, _values)           the committed table
-- An update of a missing key inserts it, an insert of an existing key updates it (both warned);
-- a delete of a missing key is ignored (warned); an upsert with identical values changes nothing.
with staged as (
    select _key, _values, _command from sync_staged
),
current_rows as (
    select _key, _values from sync_current
),
classified as (
    select
        s._key,
        case
            when s._command = 'delete' and c._key is not null then 'delete'
            when s._command = 'delete' then 'none'
            when c._key is null then 'insert'
            when s._values <> c._values then 'update'
            else 'none'
        end as _change,
        case
            when s._command = 'delete' and c._key is null then 'delete of a missing key ignored'
            when s._command = 'update' and c._key is null then 'update of a missing key inserted it'
            when s._command = 'insert' and c._key is not null then 'insert of an existing key updated it'
        end as _warning
    from staged as s
    left join current_rows as c on s._key = c._key
)
select _key, _change, _warning
from classified
where _change <> 'none' or _warning is not null
order by _key
