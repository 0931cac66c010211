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
all_rows AS (
    SELECT owner_key, role, 'rule' AS origin, CAST(NULL AS VARCHAR) AS via,
           CAST(NULL AS DATE) AS start_date, CAST(NULL AS DATE) AS end_date
    FROM rule_hits
    UNION ALL
    SELECT h.owner_key, m.role, 'composite', h.composite, CAST(NULL AS DATE), CAST(NULL AS DATE)
    FROM composite_hits h JOIN composite_members m ON m.composite = h.composite
    UNION ALL
    SELECT a.owner_key, a.role, 'manual', CAST(NULL AS VARCHAR), a.start_date, a.end_date
    FROM active_manual a JOIN single_roles s ON s.role = a.role
    UNION ALL
    SELECT a.owner_key, m.role, 'manual', a.role, a.start_date, a.end_date
    FROM active_manual a JOIN composite_members m ON m.composite = a.role
    UNION ALL
    SELECT owner_key, role, 'pre_existing', CAST(NULL AS VARCHAR), CAST(NULL AS DATE), CAST(NULL AS DATE)
    FROM pre_existing_roles
)
-- Duplicates collapse: the smallest via, the earliest start and the latest end (an open bound wins).
SELECT owner_key, role, origin,
       min(via) AS via,
       CASE WHEN count(*) > count(start_date) THEN CAST(NULL AS DATE) ELSE min(start_date) END AS start_date,
       CASE WHEN count(*) > count(end_date) THEN CAST(NULL AS DATE) ELSE max(end_date) END AS end_date
FROM all_rows
GROUP BY owner_key, role, origin
ORDER BY owner_key, role, origin
