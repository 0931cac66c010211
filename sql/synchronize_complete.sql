-- synchronize_complete: what a complete export changes in a table.
-- Grain: one row per changed key. Inputs (views built per entity or link by the task):
--   sync_staged(_key, _values)   the export: key as text, row values encoded by row_values()
--   sync_current(_key, _values)  the committed table, same encoding
-- A key only in the export is inserted, a key only in the table is deleted, a key in both with
-- different values (NULL-safe: row_values encodes NULL apart from every value) is updated.
with staged as (
    select _key, _values from sync_staged
),
current_rows as (
    select _key, _values from sync_current
),
compared as (
    select
        coalesce(s._key, c._key) as _key,
        case
            when c._key is null then 'insert'
            when s._key is null then 'delete'
            when s._values <> c._values then 'update'
        end as _change
    from staged as s
    full outer join current_rows as c on s._key = c._key
)
select _key, _change, cast(null as varchar) as _warning
from compared
where _change is not null
order by _key
