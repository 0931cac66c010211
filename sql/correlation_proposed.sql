-- Correlation of one resource type's accounts with owners (SPEC section 5 and 11.1–11.4),
-- first part: what each account's rules find.
--
-- Views registered by compute_role_model for the resource type:
--   corr_targets(account_key)                 every account of the target entity
--   corr_target_keys(account_key, rule, value) correlation_keys, target side
--   corr_owner_keys(owner_key, rule, value)    correlation_keys, owner side
--   corr_rules(rule, confidence)
--   corr_previous(account_key, owner_key, rule) links of the previous run (sticky)
--   corr_matches(account_key, rule, owner_key, last_owner)
--                                             correlation_matches.sql: the first and last
--                                             owner each rule finds for an account (computed
--                                             once: DataFusion would recompute a CTE per use)
--
-- Result: one row per account, before the duplicate rule (correlations.sql): account_key,
-- owner_key, rule, status, sticky (an existing link), conflict.
WITH first_single AS (
    -- The first rule that finds exactly one owner decides; later rules are not tried.
    SELECT account_key, min(rule) AS rule FROM corr_matches WHERE owner_key = last_owner
    GROUP BY account_key
),
found AS (
    SELECT f.account_key, m.owner_key, f.rule,
           CASE WHEN r.confidence < 100 THEN 'suggested' ELSE 'linked' END AS status
    FROM first_single f
    JOIN corr_matches m ON m.account_key = f.account_key AND m.rule = f.rule
    JOIN corr_rules r ON r.rule = f.rule
),
ambiguous AS (
    SELECT DISTINCT account_key FROM corr_matches WHERE owner_key < last_owner
),
proposed AS (
    SELECT a.account_key,
           CASE WHEN p.account_key IS NOT NULL THEN p.owner_key ELSE f.owner_key END AS owner_key,
           CASE WHEN p.account_key IS NOT NULL THEN p.rule ELSE f.rule END AS rule,
           CASE
               WHEN p.account_key IS NOT NULL THEN 'linked'
               WHEN f.account_key IS NOT NULL THEN f.status
               WHEN am.account_key IS NOT NULL THEN 'ambiguous'
               ELSE 'uncorrelated'
           END AS status,
           p.account_key IS NOT NULL AS sticky,
           coalesce(p.account_key IS NOT NULL AND f.status = 'linked' AND f.owner_key <> p.owner_key, false) AS conflict
    FROM corr_targets a
    LEFT JOIN corr_previous p ON p.account_key = a.account_key
    LEFT JOIN found f ON f.account_key = a.account_key
    LEFT JOIN ambiguous am ON am.account_key = a.account_key
)
SELECT * FROM proposed
