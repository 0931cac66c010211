#!/usr/bin/env python3
"""The DuckDB peer of the end-to-end benchmark (issue 6).

    duckdb_peer.py GENERATED_DIR --db FILE [--as-of YYYY-MM-DD] [--compare ORDERS_DIR]

The same work as igaflow's complete job on a company written by `igaflow generate`, as plain
SQL for DuckDB (Python `duckdb` from PyPI): synchronize the day-1 exports into a database
file as a first load does (SPEC section 4: typed tables, NULL and duplicate keys and missing
link endpoints refused, repeated pairs dropped, each table's `__history` and the
`recently_modified` rows of every inserted key), correlate accounts to persons (employee id, then mail),
evaluate the role model (rule roles, composite roles, manual assignments at the as-of date,
link values), and compute the provisioning orders of `ad_user` and `erp_user` (Added for
assigned owners without an account, Modified for changed scalars and group memberships,
disable for accounts of owners no longer assigned; service and admin accounts protected).

Rules come from the generated pipeline.toml: they are SQL expressions DuckDB evaluates as
igaflow's DataFusion does. Prints one JSON line per stage with its seconds, and with
--compare checks that its orders equal igaflow's order files (canonical form: resource type,
change type, account or owner, attribute new values, link values added and removed).
"""
import argparse
import json
import os
import sys
import time
import tomllib

import duckdb


def stage(name, t0, extra=None):
    rec = {"stage": name, "seconds": round(time.perf_counter() - t0, 3)}
    rec.update(extra or {})
    print(json.dumps(rec), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gen_dir")
    ap.add_argument("--db", required=True)
    ap.add_argument("--as-of", default=None)
    ap.add_argument("--compare", default=None, help="igaflow orders folder of the run")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    pipeline = tomllib.load(open(os.path.join(a.gen_dir, "pipeline/pipeline.toml"), "rb"))
    as_of = a.as_of or time.strftime("%Y-%m-%d", time.gmtime())
    if os.path.exists(a.db):
        os.remove(a.db)
    con = duckdb.connect(a.db)
    con.execute(f"SET threads = {a.threads}")
    d1 = os.path.join(a.gen_dir, "day1")

    # 1. Synchronization (first load): typed tables from the CSV exports, persisted.
    t0 = time.perf_counter()
    con.execute(f"""
        CREATE TABLE person AS SELECT *, first_name || ' ' || last_name AS display_name
        FROM read_csv('{d1}/hr/persons.csv', header = true, all_varchar = false,
             types = {{'employee_id': 'VARCHAR', 'grade': 'BIGINT', 'manager_id': 'VARCHAR',
                      'start_date': 'DATE', 'end_date': 'DATE'}});
        CREATE TABLE ad_account AS SELECT * FROM read_csv('{d1}/ad/accounts.csv', header = true,
             types = {{'employee_id': 'VARCHAR', 'mail': 'VARCHAR', 'department': 'VARCHAR',
                      'user_account_control': 'BIGINT'}});
        CREATE TABLE ad_group AS SELECT * FROM read_csv('{d1}/ad/groups.csv', header = true);
        CREATE TABLE ad_member_of AS SELECT * FROM read_csv('{d1}/ad/memberships.csv', header = true);
        CREATE TABLE erp_user AS SELECT * FROM read_csv('{d1}/erp/users.csv', header = true,
             types = {{'employee_id': 'VARCHAR'}});
        CHECKPOINT;
    """)
    load_seconds = round(time.perf_counter() - t0, 3)
    # The rest of a first load's synchronization, as igaflow's `synchronize` does it (until the
    # forty-fourth pass the peer stopped at the load above, and its "sync" stage was that load
    # alone; its time is still reported as `load_seconds`): keys and link endpoints checked,
    # repeated pairs dropped, every table's history opened by an insert, and the inserted keys
    # in `recently_modified` (a link's `from` keys), in one transaction.
    keys = {"person": "employee_id", "ad_account": "dn", "ad_group": "dn", "erp_user": "login"}
    for t, k in keys.items():
        bad = con.execute(f"""SELECT count(*) FROM (SELECT {k} FROM {t} GROUP BY {k}
                              HAVING {k} IS NULL OR count(*) > 1)""").fetchone()[0]
        if bad:
            sys.exit(f"{t}: {bad} NULL or duplicated keys")
    bad = con.execute("""SELECT count(*) FROM ad_member_of m
        WHERE m.account_dn IS NULL OR m.group_dn IS NULL
           OR m.account_dn NOT IN (SELECT dn FROM ad_account)
           OR m.group_dn NOT IN (SELECT dn FROM ad_group)""").fetchone()[0]
    if bad:
        sys.exit(f"ad_member_of: {bad} rows with a missing endpoint")
    run = "peer"
    tables = [*keys, "ad_member_of"]
    con.execute("BEGIN")
    if con.execute("""SELECT count(*) FROM (SELECT account_dn, group_dn FROM ad_member_of
                      GROUP BY ALL HAVING count(*) > 1)""").fetchone()[0]:
        con.execute("""CREATE TABLE pairs AS SELECT DISTINCT account_dn, group_dn FROM ad_member_of;
                       DROP TABLE ad_member_of; ALTER TABLE pairs RENAME TO ad_member_of""")
    for t in tables:
        con.execute(f"""CREATE TABLE {t}__history AS SELECT *, now()::TIMESTAMP AS _valid_from,
            NULL::TIMESTAMP AS _valid_to, 'insert' AS _change, '{run}' AS _run_id FROM {t}""")
    modified = [f"SELECT '{t}' AS entity, {k} AS key FROM {t}" for t, k in keys.items()]
    modified.append("SELECT DISTINCT 'ad_member_of', account_dn FROM ad_member_of")
    con.execute(f"""CREATE TABLE recently_modified AS
        SELECT entity, key, '{run}' AS run_id, 'insert' AS change
        FROM ({' UNION ALL '.join(modified)}) ORDER BY entity, key""")
    con.execute("COMMIT")
    con.execute("CHECKPOINT")
    rows = sum(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables)
    stage("sync", t0, {"rows": rows, "load_seconds": load_seconds})

    # 2. Correlation: the first rule that finds exactly one owner links the account.
    t0 = time.perf_counter()
    con.execute("""
        CREATE TABLE correlations AS
        WITH r1 AS (
            SELECT 'ad_user' AS rt, a.dn AS account_key, p.employee_id AS owner_key
            FROM ad_account a JOIN person p ON p.employee_id = a.employee_id
            UNION ALL
            SELECT 'erp_user', e.login, p.employee_id
            FROM erp_user e JOIN person p ON p.employee_id = e.employee_id
        ),
        r2 AS (
            SELECT 'ad_user' AS rt, a.dn AS account_key, p.employee_id AS owner_key
            FROM ad_account a JOIN person p ON lower(p.email) = lower(a.mail)
            WHERE a.mail IS NOT NULL AND a.mail <> ''
        ),
        one1 AS (SELECT rt, account_key, min(owner_key) AS owner_key FROM r1
                 GROUP BY ALL HAVING count(*) = 1),
        one2 AS (SELECT rt, account_key, min(owner_key) AS owner_key FROM r2
                 WHERE (rt, account_key) NOT IN (SELECT (rt, account_key) FROM one1)
                 GROUP BY ALL HAVING count(*) = 1)
        SELECT * FROM one1 UNION ALL SELECT * FROM one2;
    """)
    stage("correlation", t0, {"linked": con.execute("SELECT count(*) FROM correlations").fetchone()[0]})

    # 3. Role model: rule roles, composites, manual assignments, assigned resources and links.
    t0 = time.perf_counter()
    parts = [f"SELECT employee_id AS owner_key, '{r['name']}' AS role FROM person WHERE {r['rule']}"
             for r in pipeline.get("role", []) if "rule" in r]
    con.execute("CREATE TABLE rule_roles AS " + " UNION ALL ".join(parts))
    comp = []
    for c in pipeline.get("composite_role", []):
        members = ", ".join(f"('{m}')" for m in c["roles"])
        comp.append(f"SELECT p.employee_id AS owner_key, m.role FROM person p, (VALUES {members}) m(role) WHERE {c['rule']}")
    req = os.path.join(a.gen_dir, "pipeline", pipeline["manual_assignments"]["file"])
    con.execute(f"""
        CREATE TABLE assigned_roles AS
        SELECT DISTINCT owner_key, role FROM (
            SELECT * FROM rule_roles
            UNION ALL {' UNION ALL '.join(comp) if comp else 'SELECT NULL, NULL WHERE false'}
            UNION ALL
            SELECT r.owner_key, r.role
            FROM read_csv('{req}', header = true, types = {{'owner_key': 'VARCHAR', 'start_date': 'DATE', 'end_date': 'DATE'}}) r
            JOIN person p ON p.employee_id = r.owner_key
            WHERE r.start_date <= DATE '{as_of}' AND (r.end_date IS NULL OR r.end_date >= DATE '{as_of}')
        )
    """)
    rts = {rt["name"]: rt for rt in pipeline["resource_type"]}
    link_values = []
    for rt in rts.values():
        for l in rt.get("link", []):
            for v in l["values"]:
                link_values.append((rt["name"], v["role"], v["target"]))
    con.execute("CREATE TABLE link_values (rt VARCHAR, role VARCHAR, target VARCHAR)")
    con.executemany("INSERT INTO link_values VALUES (?, ?, ?)", link_values)
    con.execute("CREATE TABLE assigned_resources AS " + " UNION ALL ".join(
        f"SELECT '{n}' AS rt, employee_id AS owner_key FROM person WHERE {rt['rule']}" for n, rt in rts.items()))
    con.execute("""
        CREATE TABLE desired_links AS
        SELECT DISTINCT r.owner_key, v.target AS value
        FROM assigned_roles r JOIN link_values v ON v.role = r.role AND v.rt = 'ad_user'
        JOIN assigned_resources s ON s.owner_key = r.owner_key AND s.rt = 'ad_user'
    """)
    stage("role_model", t0, {"assignments": con.execute("SELECT count(*) FROM assigned_roles").fetchone()[0]})

    # 4. Orders.
    t0 = time.perf_counter()
    orders = []
    for name, rt in rts.items():
        target = rt["target"]
        key = "dn" if target == "ad_account" else "login"
        scalars = rt["scalars"]
        create_only = set(rt.get("create_only", []))
        disable = rt.get("disable", {})
        protect = []
        for c in pipeline.get("classification", []):
            if c["target"] == target and c.get("protect"):
                protect.append(c["rule"])
        protected = " OR ".join(f"({r})" for r in protect) or "false"
        desired_cols = ", ".join(f"CAST(({e}) AS VARCHAR) AS \"{c}\"" for c, e in scalars.items())
        con.execute(f"CREATE OR REPLACE TABLE desired AS SELECT employee_id AS owner_key, {desired_cols} FROM person")
        con.execute(f"""CREATE OR REPLACE TABLE acc AS
            SELECT t.*, c.owner_key, ({protected}) AS protect FROM {target} t
            LEFT JOIN correlations c ON c.account_key = t.{key} AND c.rt = '{name}'""")
        # Added
        for row in con.execute(f"""
            SELECT d.* FROM assigned_resources s JOIN desired d ON d.owner_key = s.owner_key
            WHERE s.rt = '{name}' AND s.owner_key NOT IN
                  (SELECT owner_key FROM acc WHERE owner_key IS NOT NULL)""").fetchall():
            owner = row[0]
            attrs = {c: v for c, v in zip(scalars, row[1:]) if v is not None}
            orders.append((name, "Added", owner, tuple(sorted(attrs.items())), (), ()))
        added_links = {}
        if name == "ad_user":
            for owner, value in con.execute("""
                SELECT l.owner_key, l.value FROM desired_links l
                WHERE l.owner_key NOT IN (SELECT owner_key FROM acc WHERE owner_key IS NOT NULL)""").fetchall():
                added_links.setdefault(owner, []).append(value)
            orders = [o if o[1] != "Added" or o[0] != name else
                      (o[0], o[1], o[2], o[3], tuple(sorted(added_links.get(o[2], []))), ()) for o in orders]
        # Modified (kept accounts): scalars and managed links
        updatable = [c for c in scalars if c not in create_only]
        diffs = " UNION ALL ".join(
            f"SELECT a.{key} AS k, '{c}' AS attr, d.\"{c}\" AS new FROM acc a JOIN desired d ON d.owner_key = a.owner_key "
            f"JOIN assigned_resources s ON s.owner_key = a.owner_key AND s.rt = '{name}' "
            f"WHERE NOT a.protect AND d.\"{c}\" IS DISTINCT FROM CAST(a.\"{c}\" AS VARCHAR)" for c in updatable)
        mods = {}
        for k, attr, new in con.execute(diffs).fetchall():
            mods.setdefault(k, [[], [], []])[0].append((attr, new))
        if name == "ad_user":
            con.execute("""CREATE OR REPLACE TABLE kept AS
                SELECT a.dn, a.owner_key FROM acc a JOIN assigned_resources s
                ON s.owner_key = a.owner_key AND s.rt = 'ad_user' WHERE NOT a.protect""")
            for k, v in con.execute("""
                SELECT k.dn, l.value FROM kept k JOIN desired_links l ON l.owner_key = k.owner_key
                ANTI JOIN ad_member_of m ON m.account_dn = k.dn AND m.group_dn = l.value""").fetchall():
                mods.setdefault(k, [[], [], []])[1].append(v)
            for k, v in con.execute("""
                SELECT k.dn, m.group_dn FROM kept k JOIN ad_member_of m ON m.account_dn = k.dn
                SEMI JOIN (SELECT DISTINCT target FROM link_values WHERE rt = 'ad_user') t ON t.target = m.group_dn
                ANTI JOIN desired_links l ON l.owner_key = k.owner_key AND l.value = m.group_dn""").fetchall():
                mods.setdefault(k, [[], [], []])[2].append(v)
        for k, (attrs, add, rem) in mods.items():
            orders.append((name, "Modified", k, tuple(sorted(attrs)), tuple(sorted(add)), tuple(sorted(rem))))
        # Disabled: linked accounts whose owner is no longer assigned
        for c, e in disable.items():
            for k, new in con.execute(f"""
                SELECT a.{key}, CAST(({e}) AS VARCHAR) FROM acc a
                WHERE a.owner_key IS NOT NULL AND NOT a.protect
                  AND a.owner_key NOT IN (SELECT owner_key FROM assigned_resources WHERE rt = '{name}')
                  AND CAST(({e}) AS VARCHAR) IS DISTINCT FROM CAST(a."{c}" AS VARCHAR)""").fetchall():
                orders.append((name, "Modified", k, ((c, new),), (), ()))
    stage("orders", t0, {"orders": len(orders)})

    if a.compare:
        theirs = igaflow_orders(a.compare)
        mine = sorted(orders)
        if mine != theirs:
            only_mine = sorted(set(mine) - set(theirs))[:5]
            only_theirs = sorted(set(theirs) - set(mine))[:5]
            print(json.dumps({"orders_equal": False, "peer": len(mine), "igaflow": len(theirs),
                              "only_peer": only_mine, "only_igaflow": only_theirs}, default=str))
            sys.exit(1)
        print(json.dumps({"orders_equal": True, "orders": len(mine)}))


def text(v):
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def igaflow_orders(folder):
    """igaflow's order files of one run in the peer's canonical form."""
    out = []
    for f in sorted(os.listdir(folder)):
        if not f.endswith(".json"):
            continue
        doc = json.load(open(os.path.join(folder, f)))
        for o in doc["orders"]:
            attrs = tuple(sorted((k, text(v["new"])) for k, v in o["attributes"].items()
                                 if o["change_type"] != "Added" or v["new"] is not None))
            add = tuple(sorted(v for l in o["links"].values() for v in l["add"]))
            rem = tuple(sorted(v for l in o["links"].values() for v in l["remove"]))
            who = o["owner"]["key"] if o["change_type"] == "Added" else o["resource_key"]
            out.append((o["resource_type"], o["change_type"], who, attrs, add, rem))
    return sorted(out)


if __name__ == "__main__":
    main()
