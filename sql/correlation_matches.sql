-- The owners each correlation rule finds for each account of one resource type (SPEC 11.1):
-- the first and the last owner key, equal when the rule finds exactly one owner. Views: see
-- correlations.sql, and
--   corr_found(account_key, rule, owner_key)  every owner each rule finds (the join of the
--                                             two sides' keys), collected
--   corr_shared(account_key, rule)            the (account, rule) pairs of corr_found that
--                                             find several owners, collected: few
--
-- Only those few pairs are grouped for their first and last owner. Counting the owners of
-- every pair (corr_shared) costs a third of what a minimum and a maximum of text over every
-- pair did at 1M identities (0.35 s against 0.95 s), and each other pair is its one owner.
-- The small side comes first in both joins: it is the one hashed.
SELECT f.account_key, f.rule, f.owner_key, f.owner_key AS last_owner
FROM corr_shared s
RIGHT ANTI JOIN corr_found f ON f.account_key = s.account_key AND f.rule = s.rule
UNION ALL
SELECT f.account_key, f.rule, min(f.owner_key) AS owner_key, max(f.owner_key) AS last_owner
FROM corr_shared s
JOIN corr_found f ON f.account_key = s.account_key AND f.rule = s.rule
GROUP BY f.account_key, f.rule
