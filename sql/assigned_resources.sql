-- assigned_resources for one resource type (SPEC section 5, 11.8, 11.12).
--
-- Views registered by compute_role_model:
--   rt_assigned(owner_key)      the owners assigned the resource type, each once, all present
--                               in the owner entity (assigned_owners.sql, or the rule's hits
--                               alone when no role grants the type)
--   rt_correlations(account_key, owner_key, status)
--   rt_candidates(owner_key)    owners with a suggested, ambiguous or duplicate account
WITH linked AS (
    SELECT owner_key, min(account_key) AS account_key
    FROM rt_correlations WHERE status = 'linked'
    GROUP BY owner_key
),
candidates AS (
    SELECT DISTINCT owner_key FROM rt_candidates
)
SELECT a.owner_key,
       l.account_key,
       CASE WHEN l.account_key IS NULL AND c.owner_key IS NOT NULL THEN 'review' ELSE 'assigned' END AS state
FROM rt_assigned a
LEFT JOIN linked l ON l.owner_key = a.owner_key
LEFT JOIN candidates c ON c.owner_key = a.owner_key
ORDER BY a.owner_key
