-- assigned_resources for one resource type (SPEC section 5, 11.8, 11.12).
--
-- Views registered by compute_role_model:
--   rt_owners(owner_key)        every owner present in the owner entity
--   rt_rule_hits(owner_key)     owners the resource type's rule assigns (all owners when the
--                               resource type has neither rule nor roles; none without a rule)
--   rt_roles(role)              roles that grant the resource type
--   assigned_roles              the roles just computed
--   rt_correlations(account_key, owner_key, status)
--   rt_candidates(owner_key)    owners with a suggested, ambiguous or duplicate account
WITH assigned AS (
    SELECT owner_key FROM rt_rule_hits
    UNION
    SELECT r.owner_key FROM assigned_roles r JOIN rt_roles x ON x.role = r.role
),
linked AS (
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
FROM assigned a
JOIN rt_owners o ON o.owner_key = a.owner_key
LEFT JOIN linked l ON l.owner_key = a.owner_key
LEFT JOIN candidates c ON c.owner_key = a.owner_key
ORDER BY a.owner_key
