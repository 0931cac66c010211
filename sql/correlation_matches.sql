-- The owners each correlation rule finds for each account of one resource type (SPEC 11.1):
-- the first and the last owner key, equal when the rule finds exactly one owner. Views: see
-- correlations.sql.
SELECT t.account_key, t.rule,
       min(o.owner_key) AS owner_key,
       max(o.owner_key) AS last_owner
FROM corr_target_keys t
JOIN corr_owner_keys o ON o.rule = t.rule AND o.value = t.value
GROUP BY t.account_key, t.rule
