-- classification of one target entity's accounts (SPEC section 5, 11.15).
-- Views registered by update_classification:
--   cls_accounts(account_key)                    every account of the entity
--   cls_linked(account_key, resource_type, rt_order)  linked correlations
--   cls_rt_order(_rt, rt_order)                  the entity's resource types, by file order
--   cls_first_type(account_key, resource_type)   each linked account's first resource type
--   cls_hits(account_key, rule_order)            classification rules that hold
--   cls_rules(rule_order, class, protect)
-- A linked account gets its resource type (the first in file order); any other account the
-- first classification rule in file order that holds, else `orphan`. `protect` is true when any
-- rule with protect = true holds, linked or not: such accounts never get orders.
-- The first resource type (cls_first_type) and the first rule are found by min() over their
-- file order, then named by a join: a window (row_number() per account) sorts every account, at
-- 1M accounts several times the cost of the grouping.
WITH protected AS (
    SELECT DISTINCT h.account_key
    FROM cls_hits h JOIN cls_rules r ON r.rule_order = h.rule_order
    WHERE r.protect
),
ruled AS (
    SELECT f.account_key, r.class
    FROM (SELECT account_key, min(rule_order) AS first_order FROM cls_hits GROUP BY account_key) f
    JOIN cls_rules r ON r.rule_order = f.first_order
),
-- The accounts are joined last, each small side built and the accounts probing it (RIGHT
-- JOIN, which the planner keeps without statistics of either side): a LEFT JOIN built a hash
-- table of the million accounts, twice, to probe it with the 100k ruled or protected ones.
linked AS (
    SELECT a.account_key, l.account_key AS l_key, l.resource_type
    FROM cls_first_type l RIGHT JOIN cls_accounts a ON l.account_key = a.account_key
),
classed AS (
    SELECT x.account_key, x.l_key, x.resource_type, r.account_key AS r_key, r.class
    FROM ruled r RIGHT JOIN linked x ON r.account_key = x.account_key
)
SELECT c.account_key,
       CASE
           WHEN c.l_key IS NOT NULL THEN c.resource_type
           WHEN c.r_key IS NOT NULL THEN c.class
           ELSE 'orphan'
       END AS class,
       p.account_key IS NOT NULL AS protect
FROM protected p
RIGHT JOIN classed c ON p.account_key = c.account_key
ORDER BY c.account_key
