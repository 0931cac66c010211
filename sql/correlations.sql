-- Correlation of one resource type's accounts with owners (SPEC section 5 and 11.1–11.4),
-- second part: the duplicate rule.
--
-- Views registered by compute_role_model for the resource type:
--   corr_proposed(account_key, owner_key, rule, status, sticky, conflict)
--                                             correlation_proposed.sql, computed once
--   corr_linked_twice(owner_key)              the owners of several linked accounts in
--                                             corr_proposed, collected: few
--
-- Result: one row per account: account_key, owner_key, rule, status, conflict.
WITH kept AS (
    -- An owner keeps one linked account: an existing link first, then by rule, then by key
    -- (byte order). Each candidate is one text, fixed-width before the key (sticky first, then
    -- the rule, NULL last), so the kept account is the smallest: a grouping. A window ranking
    -- each owner's accounts (row_number) cost several times more at 1M accounts. Only the
    -- owners of several linked accounts are ranked: every other linked account is kept.
    SELECT p.owner_key,
           substr(min(concat(CASE WHEN p.sticky THEN '0' ELSE '1' END,
                             CASE WHEN p.rule IS NULL THEN '1' ELSE '0' END,
                             lpad(coalesce(CAST(p.rule AS VARCHAR), ''), 20, '0'),
                             p.account_key)), 23) AS account_key
    FROM corr_linked_twice t
    JOIN corr_proposed p ON p.owner_key = t.owner_key
    WHERE p.status = 'linked'
    GROUP BY p.owner_key
)
SELECT p.account_key,
       p.owner_key,
       p.rule,
       CASE WHEN p.status = 'linked' AND k.account_key <> p.account_key THEN 'duplicate'
            ELSE p.status END AS status,
       p.conflict
FROM kept k
RIGHT JOIN corr_proposed p ON k.owner_key = p.owner_key
ORDER BY p.account_key
