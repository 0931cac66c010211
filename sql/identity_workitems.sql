-- Work items of update_identities for one resource type (SPEC section 9, the seed's tables).
--
-- Views registered by the task:
--   li_accounts(account_key, owner_key, active, deactivated_by)  linked accounts in the target,
--       `active` as the engine last set it (identity_states) or by the lifecycle expression
--   li_owners(owner_key, state, anonymization_status)
--   li_flags(features, update_when_owner_disabled)  features: the resource type's `update` and
--       the connector's `update`
-- Result: one row per account of an enabled resource type, with whether it is in the base
-- filter (`update_item`) and the actions that follow. Every action needs the base filter: a
-- deleted owner's active account is deactivated only when the owner is to be anonymized or
-- `update_when_owner_disabled` is set (SPEC 9: "Base filter, all of: ..."); otherwise the role
-- model's `on_lost` treatment is what reaches it.
WITH a AS (
    SELECT acc.account_key, acc.owner_key, acc.active, acc.deactivated_by,
           o.state, o.anonymization_status AS anon, f.features, f.update_when_owner_disabled
    FROM li_accounts acc
    JOIN li_owners o ON o.owner_key = acc.owner_key
    CROSS JOIN li_flags f
),
sets AS (
    SELECT *,
           (state = 1 OR anon = 2) AS c_active,                       -- account exists: it is linked
           (state = 2 AND anon = 2) AS c_anonymize,
           (update_when_owner_disabled AND state = 2) AS c_disabled,
           (state = 3 AND active) AS c_suspended,
           (state = 1 AND NOT active AND deactivated_by IS NULL) AS c_reactivate,
           (state = 3 AND NOT active) AS c_ignored
    FROM a
)
SELECT account_key, owner_key, state, anon, active,
       features
         AND (c_active OR c_anonymize OR c_disabled OR c_suspended OR c_reactivate)
         AND NOT c_ignored AS update_item,
       features AND c_anonymize AND NOT c_ignored AS anonymize_item,
       features
         AND (c_active OR c_anonymize OR c_disabled OR c_suspended OR c_reactivate)
         AND NOT c_ignored
         AND active AND (state = 2 OR state = 3) AS deactivate_item,
       features AND c_reactivate AND NOT c_ignored AS reactivate_item
FROM sets
WHERE features
ORDER BY account_key
