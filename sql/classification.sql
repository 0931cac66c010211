-- classification of one target entity's accounts (SPEC section 5, 11.15).
-- Views registered by update_classification:
--   cls_accounts(account_key)                    every account of the entity
--   cls_linked(account_key, resource_type, rt_order)  linked correlations
--   cls_hits(account_key, rule_order)            classification rules that hold
--   cls_rules(rule_order, class, protect)
-- A linked account gets its resource type (the first in file order); any other account the
-- first classification rule in file order that holds, else `orphan`. `protect` is true when any
-- rule with protect = true holds, linked or not: such accounts never get orders.
WITH linked AS (
    SELECT account_key, resource_type,
           row_number() OVER (PARTITION BY account_key ORDER BY rt_order) AS n
    FROM cls_linked
),
protected AS (
    SELECT DISTINCT h.account_key
    FROM cls_hits h JOIN cls_rules r ON r.rule_order = h.rule_order
    WHERE r.protect
),
ruled AS (
    SELECT h.account_key, r.class, r.protect,
           row_number() OVER (PARTITION BY h.account_key ORDER BY r.rule_order) AS n
    FROM cls_hits h JOIN cls_rules r ON r.rule_order = h.rule_order
)
SELECT a.account_key,
       CASE
           WHEN l.account_key IS NOT NULL THEN l.resource_type
           WHEN r.account_key IS NOT NULL THEN r.class
           ELSE 'orphan'
       END AS class,
       p.account_key IS NOT NULL AS protect
FROM cls_accounts a
LEFT JOIN linked l ON l.account_key = a.account_key AND l.n = 1
LEFT JOIN ruled r ON r.account_key = a.account_key AND r.n = 1
LEFT JOIN protected p ON p.account_key = a.account_key
ORDER BY a.account_key
