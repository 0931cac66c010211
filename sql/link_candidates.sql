-- The (owner_key, account_key) pairs of one resource type whose link values may differ
-- (SPEC section 6): the pairs whose fingerprints differ. A side's fingerprint is its count of
-- (link, value) rows and the wrapping sums of the two 64-bit halves of their keyed 128-bit
-- hashes (`value_fingerprint`, see src/engine/value_hash.rs): the owner's desired values on one side, the account's current
-- managed values on the other. Equal sets give equal fingerprints, so orders.sql compares
-- values row by row only for these pairs instead of joining every current link of every
-- account with every desired one. A pair the fingerprints miss would need the sums of
-- keyed 128-bit hashes to collide (about 2^-128).
--
-- Views: o_assigned, o_desired_links (orders.sql) and o_removable_links(account_key, link,
-- value): the current values the resource type manages (may remove): all of a link in mode
-- `all`, else the values its rules name; when they equal the desired ones, no value is added
-- (the desired ones are all current) and none is removed. The task filters o_current_links
-- with the link names and values of the configuration (one hash set of texts) instead of
-- joining every current link with the link modes and the managed values.
WITH
kept AS (
    SELECT owner_key, account_key FROM o_assigned WHERE account_key IS NOT NULL
),
current_fp AS (
    SELECT account_key, n, fp['h1'] AS h1, fp['h2'] AS h2
    FROM (
        SELECT account_key, count(*) AS n, value_fingerprint(link, value) AS fp
        FROM o_removable_links
        GROUP BY account_key
    )
),
desired_fp AS (
    SELECT owner_key, n, fp['h1'] AS h1, fp['h2'] AS h2
    FROM (
        SELECT owner_key, count(*) AS n, value_fingerprint(link, value) AS fp
        FROM o_desired_links
        GROUP BY owner_key
    )
)
SELECT k.owner_key, k.account_key
FROM kept k
LEFT JOIN current_fp c ON c.account_key = k.account_key
LEFT JOIN desired_fp d ON d.owner_key = k.owner_key
WHERE (coalesce(c.n, 0) <> coalesce(d.n, 0))
   OR (c.h1 IS DISTINCT FROM d.h1)
   OR (c.h2 IS DISTINCT FROM d.h2)
