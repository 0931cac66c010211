-- Provisioning order parts of one resource type (SPEC section 6, 11.8–11.11).
--
-- Views registered by generate_provisioning_orders:
--   o_assigned(owner_key, account_key, state)        assigned_resources of the resource type
--   o_added(owner_key)                               owners assigned an account they lack
--                                                    (o_assigned without account_key, state
--                                                    'assigned'), collected
--   o_linked(account_key, owner_key)                 linked correlations
--   o_claimed(account_key)                           linked accounts an earlier resource type
--                                                    of the target links too: its accounts
--                                                    (SPEC 11.15), no order from this one
--   o_accounts(account_key, class, protect, status)  every target account: classification and
--                                                    correlation status
--   o_desired_scalars(owner_key, attribute, value)   assigned_scalars (text of the target type)
--   o_identity_updates(account_key, attribute, value) values of accounts under anonymization
--                                                    (update_identities, status 3 or 4); they
--                                                    win over desired; and the changed values
--                                                    of accounts the role model does not keep
--                                                    (SPEC 9 update of a lost account)
--   o_deactivated(account_key)                      accounts the lifecycle keeps inactive
--                                                    (deactivated by update_identities, or
--                                                    inactive with a suspended owner or
--                                                    deactivated by hand); their disable
--                                                    values win
--   o_current_scalars(account_key, attribute, value) the target's current values, same text form
--                                                    (not of create_only attributes)
--   o_desired_links(owner_key, link, value)
--   o_link_candidates(owner_key, account_key)       kept pairs whose links may differ
--   o_candidate_current_links, o_candidate_desired_links  o_current_links of their accounts,
--                                                    o_desired_links of their owners
--   o_current_links(account_key, link, value)
--   o_disable(account_key, attribute, value)         disable values per account
--   o_managed(link, value)                           values named in the link rules
--   o_link_modes(link, managed)                      rules | all
--   o_create_only(attribute)
--   o_policy(on_lost, orphans)
--
-- Result: the part_* pieces at the end, each one row per order part: change_type, kind
-- (added|modified|disabled|deleted), owner_key, account_key, part (order|attribute|add|remove),
-- name, old_value, new_value.
-- The header part ('order') of a Modified order is not here: every Modified order has at
-- least one attribute or link part, so the task derives the headers from the parts
-- (DataFusion inlines a CTE at each use; deriving them here would compute every diff twice).
WITH
protected AS (
    SELECT account_key FROM o_accounts WHERE protect
    UNION ALL
    SELECT account_key FROM o_claimed
),
kept AS (
    SELECT owner_key, account_key FROM o_assigned WHERE account_key IS NOT NULL
),
lost AS (
    SELECT l.account_key, l.owner_key
    FROM o_linked l
    LEFT JOIN o_assigned a ON a.account_key = l.account_key
    WHERE a.account_key IS NULL
),
orphan AS (
    -- Never linked and no classification rule; an account awaiting review (a suggested,
    -- ambiguous or duplicate match: correlation_candidates lists it) is not an orphan.
    SELECT account_key, CAST(NULL AS VARCHAR) AS owner_key
    FROM o_accounts
    WHERE class = 'orphan'
      AND coalesce(status, 'uncorrelated') NOT IN ('suggested', 'ambiguous', 'duplicate')
),
to_disable AS (
    SELECT account_key, owner_key FROM lost, o_policy WHERE o_policy.on_lost = 'disable'
    UNION ALL
    SELECT account_key, owner_key FROM orphan, o_policy WHERE o_policy.orphans = 'disable'
),
to_delete AS (
    SELECT account_key, owner_key FROM lost, o_policy WHERE o_policy.on_lost = 'delete'
    UNION ALL
    SELECT account_key, owner_key FROM orphan, o_policy WHERE o_policy.orphans = 'delete'
),
held_disabled AS (
    -- The disable values of accounts update_identities holds deactivated.
    SELECT x.account_key, x.attribute, x.value
    FROM o_deactivated d JOIN o_disable x ON x.account_key = d.account_key
),
identity AS (
    -- Values that win over the role model's desired ones: those of deactivated accounts, then
    -- those of accounts under anonymization.
    SELECT account_key, attribute, value FROM held_disabled
    UNION ALL
    SELECT u.account_key, u.attribute, u.value
    FROM o_identity_updates u
    WHERE NOT EXISTS (
        SELECT 1 FROM held_disabled h
        WHERE h.account_key = u.account_key AND h.attribute = u.attribute
    )
),
desired AS (
    -- The task runs part_scalars with its joins as written (the left side is the hash table),
    -- so the small side comes first here and in scalar_candidates.
    SELECT d.owner_key, d.account_key, d.attribute, d.value
    FROM identity i
    RIGHT ANTI JOIN (
        SELECT k.owner_key, k.account_key, d.attribute, d.value
        FROM kept k
        JOIN o_desired_scalars d ON d.owner_key = k.owner_key
    ) d ON i.account_key = d.account_key AND i.attribute = d.attribute
    UNION ALL
    SELECT k.owner_key, k.account_key, i.attribute, i.value
    FROM identity i
    JOIN kept k ON k.account_key = i.account_key
),
scalar_candidates AS (
    -- The desired values whose (account, attribute, value) is not among the current ones,
    -- found by two keyed 64-bit hashes of the three (see src/engine/value_hash.rs): an anti
    -- join on two integers built on the current values, instead of a hash table of 4.7M
    -- desired rows on two strings probed by 7.7M current ones (at 1M identities). A value
    -- that differs is missed only if both hashes collide at once (about 2^-128);
    -- scalar_diff compares the survivors exactly.
    SELECT d.owner_key, d.account_key, d.attribute, d.value
    FROM (
        SELECT value_hash(CAST(1 AS BIGINT), account_key, attribute, value) AS h1,
               value_hash(CAST(2 AS BIGINT), account_key, attribute, value) AS h2
        FROM o_current_scalars
    ) c
    RIGHT ANTI JOIN (
        SELECT d.*,
               value_hash(CAST(1 AS BIGINT), d.account_key, d.attribute, d.value) AS h1,
               value_hash(CAST(2 AS BIGINT), d.account_key, d.attribute, d.value) AS h2
        FROM o_create_only co
        RIGHT ANTI JOIN desired d ON co.attribute = d.attribute
    ) d ON c.h1 = d.h1 AND c.h2 = d.h2
),
scalar_diff AS (
    SELECT d.owner_key, d.account_key, d.attribute, c.value AS old_value, d.value AS new_value
    FROM scalar_candidates d
    LEFT JOIN o_current_scalars c ON c.account_key = d.account_key AND c.attribute = d.attribute
    WHERE d.value IS DISTINCT FROM c.value
),
identity_diff AS (
    -- Accounts under anonymization the role model no longer keeps (a leaver being disabled):
    -- their values change with the disable order, or in an order of their own.
    SELECT l.owner_key, i.account_key, i.attribute, c.value AS old_value, i.value AS new_value
    FROM identity i
    JOIN o_linked l ON l.account_key = i.account_key
    LEFT JOIN kept k ON k.account_key = i.account_key
    LEFT JOIN o_create_only co ON co.attribute = i.attribute
    LEFT JOIN o_current_scalars c ON c.account_key = i.account_key AND c.attribute = i.attribute
    WHERE k.account_key IS NULL AND co.attribute IS NULL AND (i.value IS DISTINCT FROM c.value)
      AND i.account_key NOT IN (SELECT account_key FROM to_delete)
      -- An attribute the role model's own disable order sets is there once.
      AND NOT EXISTS (
        SELECT 1 FROM to_disable t JOIN o_disable x ON x.account_key = t.account_key
        WHERE t.account_key = i.account_key AND x.attribute = i.attribute
      )
),
-- The link diffs cover only the pairs whose link fingerprints differ (o_link_candidates, see
-- link_candidates.sql), and are anti-joins (NOT EXISTS): a LEFT JOIN filtered on IS NULL
-- would first build every matched row, then drop them.
link_add AS (
    SELECT k.owner_key, k.account_key, d.link, d.value
    FROM o_link_candidates k
    JOIN o_candidate_desired_links d ON d.owner_key = k.owner_key
    WHERE NOT EXISTS (
        SELECT 1 FROM o_candidate_current_links c
        WHERE c.account_key = k.account_key AND c.link = d.link AND c.value = d.value
    )
),
link_remove AS (
    -- Current values the resource type may remove: all of a link in mode `all`, else the
    -- values its rules name.
    SELECT k.owner_key, k.account_key, c.link, c.value
    FROM o_link_candidates k
    JOIN o_candidate_current_links c ON c.account_key = k.account_key
    JOIN o_link_modes m ON m.link = c.link
    LEFT JOIN o_managed n ON n.link = c.link AND n.value = c.value
    WHERE (m.managed = 'all' OR n.link IS NOT NULL)
      AND NOT EXISTS (
        SELECT 1 FROM o_candidate_desired_links d
        WHERE d.owner_key = k.owner_key AND d.link = c.link AND d.value = c.value
    )
),
disable_diff AS (
    SELECT t.owner_key, t.account_key, x.attribute, c.value AS old_value, x.value AS new_value
    FROM to_disable t
    JOIN o_disable x ON x.account_key = t.account_key
    LEFT JOIN o_current_scalars c ON c.account_key = t.account_key AND c.attribute = x.attribute
    WHERE x.value IS DISTINCT FROM c.value
),
identity_parts AS (
    SELECT i.*, CASE WHEN d.account_key IS NULL THEN 'modified' ELSE 'disabled' END AS kind
    FROM identity_diff i
    LEFT JOIN (SELECT DISTINCT account_key FROM disable_diff) d ON d.account_key = i.account_key
),
-- One piece per kind of part. The task runs them one after the other, each as
--   SELECT p.* FROM <piece> p LEFT JOIN o_protected x ON x.account_key = p.account_key
--   WHERE x.account_key IS NULL
-- (o_protected is the protected CTE above, collected by the task first; this file ends with
-- its last CTE): fewer operators are live at once, which is what lets orders complete under
-- a small --memory-limit (each spilling operator's share of the pool is the pool divided by
-- the operators registered at that moment).
part_added AS (
    SELECT 'Added' AS change_type, 'added' AS kind, owner_key, CAST(NULL AS VARCHAR) AS account_key,
           'order' AS part, CAST(NULL AS VARCHAR) AS name,
           CAST(NULL AS VARCHAR) AS old_value, CAST(NULL AS VARCHAR) AS new_value
    FROM o_added
),
part_added_attributes AS (
    SELECT 'Added' AS change_type, 'added' AS kind, a.owner_key, CAST(NULL AS VARCHAR) AS account_key,
           'attribute' AS part, d.attribute AS name, CAST(NULL AS VARCHAR) AS old_value,
           d.value AS new_value
    FROM o_added a JOIN o_desired_scalars d ON d.owner_key = a.owner_key
    WHERE d.value IS NOT NULL
),
part_added_links AS (
    SELECT 'Added' AS change_type, 'added' AS kind, a.owner_key, CAST(NULL AS VARCHAR) AS account_key,
           'add' AS part, d.link AS name, CAST(NULL AS VARCHAR) AS old_value, d.value AS new_value
    FROM o_added a JOIN o_desired_links d ON d.owner_key = a.owner_key
),
part_scalars AS (
    -- A value the lifecycle's deactivation sets (held_disabled) makes the order a disabling
    -- one, which the thresholds count as a deletion (SPEC 11.13); the task gives the whole
    -- order that kind.
    SELECT 'Modified' AS change_type,
           CASE WHEN h.account_key IS NULL THEN 'modified' ELSE 'disabled' END AS kind,
           s.owner_key, s.account_key, 'attribute' AS part, s.attribute AS name, s.old_value,
           s.new_value
    FROM scalar_diff s
    LEFT JOIN (SELECT DISTINCT account_key, attribute FROM held_disabled) h
      ON h.account_key = s.account_key AND h.attribute = s.attribute
),
part_link_add AS (
    SELECT 'Modified' AS change_type, 'modified' AS kind, owner_key, account_key, 'add' AS part,
           link AS name, CAST(NULL AS VARCHAR) AS old_value, value AS new_value
    FROM link_add
),
part_link_remove AS (
    SELECT 'Modified' AS change_type, 'modified' AS kind, owner_key, account_key, 'remove' AS part,
           link AS name, value AS old_value, CAST(NULL AS VARCHAR) AS new_value
    FROM link_remove
),
part_disable AS (
    SELECT 'Modified' AS change_type, 'disabled' AS kind, owner_key, account_key,
           'attribute' AS part, attribute AS name, old_value, new_value
    FROM disable_diff
),
part_identity AS (
    SELECT 'Modified' AS change_type, kind, owner_key, account_key, 'attribute' AS part,
           attribute AS name, old_value, new_value
    FROM identity_parts
),
part_deleted AS (
    SELECT 'Deleted' AS change_type, 'deleted' AS kind, owner_key, account_key, 'order' AS part,
           CAST(NULL AS VARCHAR) AS name, CAST(NULL AS VARCHAR) AS old_value,
           CAST(NULL AS VARCHAR) AS new_value
    FROM to_delete
)
