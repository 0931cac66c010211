-- assigned_roles: single roles per owner with their origin (SPEC section 5, 11.5–11.6).
--
-- Views registered by compute_role_model:
--   rule_hits(owner_key, role)             single roles whose rule holds for the owner
--   composite_hits(owner_key, composite)   composite roles whose rule holds
--   composite_members(composite, role)     the configuration's composite roles
--   single_roles(role)
--   manual(owner_key, role, start_date, end_date)  manual assignments of known owners
--   pre_existing_roles(owner_key, role)    roles saved by save_pre_existing_access_rights
-- current_date is the run's --as-of date; start and end dates are inclusive.
WITH active_manual AS (
    SELECT owner_key, role, start_date, end_date
    FROM manual
    WHERE (start_date IS NULL OR start_date <= current_date)
      AND (end_date IS NULL OR end_date >= current_date)
),
manual_rows AS (
    SELECT a.owner_key, a.role, CAST(NULL AS VARCHAR) AS via, a.start_date, a.end_date
    FROM active_manual a JOIN single_roles s ON s.role = a.role
    UNION ALL
    SELECT a.owner_key, m.role, a.role, a.start_date, a.end_date
    FROM active_manual a JOIN composite_members m ON m.composite = a.role
)
-- One row per (owner_key, role, origin); duplicates collapse: the smallest via, the earliest
-- start and the latest end (an open bound wins). Each origin is grouped on its own: grouped
-- together, DataFusion 55 sees the literal origin of each branch as a sort order and runs a
-- partially sorted aggregation that spent minutes emitting at 1M owners.
-- Rule hits are unique already (one row per owner key and rule).
SELECT owner_key, role, 'rule' AS origin, CAST(NULL AS VARCHAR) AS via,
       CAST(NULL AS DATE) AS start_date, CAST(NULL AS DATE) AS end_date
FROM rule_hits
UNION ALL
SELECT h.owner_key, m.role, 'composite', min(h.composite), CAST(NULL AS DATE), CAST(NULL AS DATE)
FROM composite_hits h JOIN composite_members m ON m.composite = h.composite
GROUP BY h.owner_key, m.role
UNION ALL
SELECT owner_key, role, 'manual', min(via),
       CASE WHEN count(*) > count(start_date) THEN CAST(NULL AS DATE) ELSE min(start_date) END,
       CASE WHEN count(*) > count(end_date) THEN CAST(NULL AS DATE) ELSE max(end_date) END
FROM manual_rows
GROUP BY owner_key, role
UNION ALL
SELECT owner_key, role, 'pre_existing', CAST(NULL AS VARCHAR), CAST(NULL AS DATE), CAST(NULL AS DATE)
FROM (SELECT DISTINCT owner_key, role FROM pre_existing_roles) p
