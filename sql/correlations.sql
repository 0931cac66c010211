-- Correlation of one resource type's accounts with owners (SPEC section 5 and 11.1–11.4),
-- second part: the duplicate rule.
--
-- Views registered by compute_role_model for the resource type:
--   corr_proposed(account_key, owner_key, rule, status, sticky, conflict)
--                                             correlation_proposed.sql, computed once
--
-- Result: one row per account: account_key, owner_key, rule, status, conflict.
WITH kept AS (
    -- An owner keeps one linked account: an existing link first, then by rule, then by key
    -- (byte order). Each candidate is one text, fixed-width before the key (sticky first, then
    -- the rule, NULL last), so the kept account is the smallest: a grouping. A window ranking
    -- each owner's accounts (row_number) cost several times more at 1M accounts.
    SELECT owner_key,
           substr(min(concat(CASE WHEN sticky THEN '0' ELSE '1' END,
                             CASE WHEN rule IS NULL THEN '1' ELSE '0' END,
                             lpad(coalesce(CAST(rule AS VARCHAR), ''), 20, '0'),
                             account_key)), 23) AS account_key
    FROM corr_proposed
    WHERE status = 'linked'
    GROUP BY owner_key
)
SELECT p.account_key,
       p.owner_key,
       p.rule,
       CASE WHEN p.status = 'linked' AND k.account_key <> p.account_key THEN 'duplicate'
            ELSE p.status END AS status,
       p.conflict
FROM corr_proposed p
LEFT JOIN kept k ON k.owner_key = p.owner_key AND p.status = 'linked'
ORDER BY p.account_key
