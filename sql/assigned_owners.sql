-- The owners assigned one resource type (SPEC section 5, 11.12): its rule's hits and the
-- owners of a role that grants it, each once, present in the owner entity.
--
-- Views registered by compute_role_model:
--   rt_owners(owner_key)        every owner present in the owner entity
--   rt_rule_hits(owner_key)     owners the resource type's rule assigns (all owners when the
--                               resource type has neither rule nor roles; none without a rule)
--   rt_roles(role)              roles that grant the resource type
--   assigned_roles              the roles just computed
SELECT a.owner_key
FROM (
    SELECT owner_key FROM rt_rule_hits
    UNION
    SELECT r.owner_key FROM assigned_roles r JOIN rt_roles x ON x.role = r.role
) a
JOIN rt_owners o ON o.owner_key = a.owner_key
