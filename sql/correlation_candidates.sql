-- Owners that an unsettled account may belong to (SPEC 11.8): the owner of a suggested or
-- duplicate account, and every owner an ambiguous account's rules matched.
-- Views: rt_correlations (the result of correlations.sql), corr_ambiguous (its ambiguous
-- accounts, collected first: few, so the join builds on them rather than on every account's
-- keys), corr_target_keys, corr_owner_keys.
SELECT owner_key FROM rt_correlations
WHERE status IN ('suggested', 'duplicate') AND owner_key IS NOT NULL
UNION
SELECT o.owner_key
FROM corr_ambiguous c
JOIN corr_target_keys t ON t.account_key = c.account_key
JOIN corr_owner_keys o ON o.rule = t.rule AND o.value = t.value
