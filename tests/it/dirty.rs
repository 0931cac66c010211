//! Incremental (dirty) processing equals a complete recomputation: a seeded loop of random
//! change sets over a small generated company. After every incremental run, a copy of the store
//! recomputes correlation keys, the role model, classification and orders from scratch, and the
//! tables must match.

use std::collections::BTreeMap;

use crate::common::*;

/// Days of random changes, each an incremental run compared with a complete one. CI's long
/// pole (about 45 s a day on 2 cores): 40 days gave a 42-minute `.ci/run`, too close to its 45.
const ITERATIONS: usize = 35;

/// A tiny deterministic generator (no dependency): xorshift64*.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

const DEPTS: [&str; 3] = ["Sales", "IT", "HR"];
const STATUSES: [&str; 3] = ["active", "active", "terminated"];

#[derive(Clone)]
struct Person {
    dept: String,
    status: String,
    mail: String,
}

#[derive(Clone)]
struct Account {
    owner_id: String,
    email: String,
    dept: String,
    enabled: bool,
}

fn pipeline() -> String {
    r#"name = "dirty"

[store]
deletion_vectors = true

[connector.hr]
exports = "../exports/hr"
[connector.app]
exports = "../exports/app"

[[entity]]
name = "person"
connector = "hr"
file = "persons.csv"
key = "id"
columns = { id = "string", dept = "string", status = "string", mail = "string" }

[[entity]]
name = "account"
connector = "app"
file = "accounts.csv"
key = "login"
columns = { login = "string", owner_id = "string", email = "string", dept = "string", enabled = "bool" }

[[entity]]
name = "app_group"
connector = "app"
file = "groups.csv"
key = "gid"
columns = { gid = "string" }

[[link]]
name = "member"
connector = "app"
file = "members.csv"
from = { entity = "account", column = "login" }
to = { entity = "app_group", column = "gid" }

[[role]]
name = "sales"
rule = "dept = 'Sales'"

[[role]]
name = "it"
rule = "dept = 'IT'"

[[role]]
name = "staff"

[[composite_role]]
name = "it_team"
rule = "dept = 'IT' AND status = 'active'"
roles = ["staff"]

[[resource_type]]
name = "app_user"
owner = "person"
target = "account"
rule = "status = 'active'"
on_lost = "disable"
orphans = "delete"
disable = { enabled = "false" }
correlation = [ { target = "owner_id", owner = "id" }, { target = "lower(email)", owner = "lower(mail)" } ]
scalars = { email = "mail", dept = "dept", enabled = "true" }
thresholds = { min_rows = 100000 }

[[resource_type.link]]
link = "member"
managed = "all"
values = [ { role = "sales", target = "G_SALES" }, { role = "it", target = "G_IT" }, { role = "staff", target = "G_STAFF" } ]

[[classification]]
target = "account"
name = "service"
rule = "login LIKE 'svc%'"

[[job]]
name = "incremental"
[[job.task]]
name = "sync_hr"
type = "synchronize"
connector = "hr"
mode = "incremental"
[[job.task]]
name = "sync_app"
type = "synchronize"
connector = "app"
depends_on = []
[[job.task]]
name = "flag"
type = "set_recently_modified_flag"
depends_on = ["sync_hr", "sync_app"]
[[job.task]]
name = "keys"
type = "compute_correlation_keys"
dirty = true
[[job.task]]
name = "roles"
type = "compute_role_model"
dirty = true
[[job.task]]
name = "classify"
type = "update_classification"
dirty = true
[[job.task]]
name = "orders"
type = "generate_provisioning_orders"
dirty = true

[[job]]
name = "recompute"
[[job.task]]
name = "keys"
type = "compute_correlation_keys"
[[job.task]]
name = "roles"
type = "compute_role_model"
[[job.task]]
name = "classify"
type = "update_classification"
[[job.task]]
name = "orders"
type = "generate_provisioning_orders"
"#
    .to_string()
}

fn write_app(
    env: &Env,
    accounts: &BTreeMap<String, Account>,
    members: &BTreeMap<(String, String), ()>,
) {
    let mut a = String::from("login,owner_id,email,dept,enabled\n");
    for (login, x) in accounts {
        a.push_str(&format!(
            "{login},{},{},{},{}\n",
            x.owner_id, x.email, x.dept, x.enabled
        ));
    }
    env.write("exports/app/accounts.csv", a);
    env.write(
        "exports/app/groups.csv",
        "gid\nG_IT\nG_SALES\nG_STAFF\nG_X\n",
    );
    let mut m = String::from("login,gid\n");
    for (login, gid) in members.keys() {
        if accounts.contains_key(login) {
            m.push_str(&format!("{login},{gid}\n"));
        }
    }
    env.write("exports/app/members.csv", m);
}

/// The compared tables: name, columns, filter.
const COMPARED: [(&str, &[&str], &str); 5] = [
    (
        "correlation_keys",
        &["resource_type", "side", "entity", "key", "rule", "value"],
        "true",
    ),
    (
        "correlations",
        &[
            "resource_type",
            "account_key",
            "owner_key",
            "rule",
            "status",
            "conflict",
        ],
        "true",
    ),
    (
        "assigned_roles",
        &[
            "owner_key",
            "role",
            "origin",
            "via",
            "start_date",
            "end_date",
        ],
        "true",
    ),
    (
        "classification",
        &["entity", "account_key", "class", "protect"],
        "true",
    ),
    (
        "provisioning_orders",
        &[
            "order_id",
            "change_type",
            "owner_key",
            "account_key",
            "attributes",
            "links",
        ],
        "state = 'pending'",
    ),
];

/// Every compared row as text, in one query (one process start per store).
fn state(store: &str) -> BTreeMap<String, Vec<String>> {
    let parts: Vec<String> = COMPARED
        .iter()
        .map(|(table, cols, filter)| {
            let text: Vec<String> = cols
                .iter()
                .map(|c| format!("coalesce(cast({c} as varchar), '<null>')"))
                .collect();
            format!(
                "select '{table}' as t, concat_ws('|', {}) as r from {table} where {filter}",
                text.join(", ")
            )
        })
        .collect();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in query(store, &parts.join(" union all ")) {
        out.entry(row[0].clone()).or_default().push(row[1].clone());
    }
    for rows in out.values_mut() {
        rows.sort();
    }
    out
}

/// `correlation_keys` written in parallel parts of a few rows each.
const PARTS: (&str, &str) = ("IGAFLOW_WRITE_PART_ROWS", "4");

#[test]
fn incremental_runs_equal_a_complete_recomputation() {
    let env = Env::new();
    env.write_pipeline(&pipeline());
    let mut rng = Rng(0x1DA_F10E);
    let mut persons: BTreeMap<String, Person> = BTreeMap::new();
    let mut accounts: BTreeMap<String, Account> = BTreeMap::new();
    let mut members: BTreeMap<(String, String), ()> = BTreeMap::new();
    let mut cleared_lookups = 0;
    // Day 0: 12 persons, most with an account, a service account.
    let mut hr = String::from("command,id,dept,status,mail\n");
    for i in 0..12 {
        let p = Person {
            dept: rng.pick(&DEPTS).to_string(),
            status: rng.pick(&STATUSES).to_string(),
            mail: format!("p{i}@x.com"),
        };
        hr.push_str(&format!(
            "insert,P{i:02},{},{},{}\n",
            p.dept, p.status, p.mail
        ));
        if i % 4 != 0 {
            accounts.insert(
                format!("u{i:02}"),
                Account {
                    owner_id: format!("P{i:02}"),
                    email: p.mail.clone(),
                    dept: p.dept.clone(),
                    enabled: true,
                },
            );
            members.insert((format!("u{i:02}"), "G_X".into()), ());
        }
        persons.insert(format!("P{i:02}"), p);
    }
    accounts.insert(
        "svc1".into(),
        Account {
            owner_id: String::new(),
            email: String::new(),
            dept: "IT".into(),
            enabled: true,
        },
    );
    env.write("exports/hr/persons.csv", hr);
    write_app(&env, &accounts, &members);
    let mut next_person = 12;
    let mut next_account = 100;

    for iteration in 0..=ITERATIONS {
        if iteration > 0 {
            // A random change set: HR commands and AD changes.
            let mut hr = String::from("command,id,dept,status,mail\n");
            // One command per key in a change file.
            let mut touched = std::collections::BTreeSet::new();
            for _ in 0..1 + rng.below(3) {
                let ids: Vec<String> = persons
                    .keys()
                    .filter(|k| !touched.contains(*k))
                    .cloned()
                    .collect();
                match rng.below(5) {
                    0 => {
                        let id = format!("P{next_person:02}");
                        next_person += 1;
                        // Sometimes a mail someone already has: ambiguity.
                        let mail = if rng.below(4) == 0 && !ids.is_empty() {
                            persons[rng.pick(&ids)].mail.clone()
                        } else {
                            format!("{}@x.com", id.to_lowercase())
                        };
                        let p = Person {
                            dept: rng.pick(&DEPTS).to_string(),
                            status: "active".into(),
                            mail,
                        };
                        hr.push_str(&format!("insert,{id},{},{},{}\n", p.dept, p.status, p.mail));
                        touched.insert(id.clone());
                        persons.insert(id, p);
                    }
                    1 if !ids.is_empty() => {
                        let id = rng.pick(&ids).clone();
                        touched.insert(id.clone());
                        hr.push_str(&format!("delete,{id},,,\n"));
                        persons.remove(&id);
                    }
                    _ if !ids.is_empty() => {
                        let id = rng.pick(&ids).clone();
                        touched.insert(id.clone());
                        let p = persons.get_mut(&id).unwrap();
                        match rng.below(3) {
                            0 => p.dept = rng.pick(&DEPTS).to_string(),
                            1 => p.status = rng.pick(&STATUSES).to_string(),
                            _ => p.mail = format!("m{}@x.com", rng.below(6)),
                        }
                        hr.push_str(&format!("update,{id},{},{},{}\n", p.dept, p.status, p.mail));
                    }
                    _ => {}
                }
            }
            env.write("exports/hr/persons.csv", hr);
            for _ in 0..rng.below(3) {
                let logins: Vec<String> = accounts.keys().cloned().collect();
                let ids: Vec<String> = persons.keys().cloned().collect();
                match rng.below(5) {
                    0 if !ids.is_empty() => {
                        let owner = rng.pick(&ids).clone();
                        let login = format!("a{next_account}");
                        next_account += 1;
                        // Linked by id, or only by mail (upper case: needs lower()).
                        let (owner_id, email) = if rng.below(2) == 0 {
                            (owner.clone(), String::new())
                        } else {
                            (String::new(), persons[&owner].mail.to_uppercase())
                        };
                        accounts.insert(
                            login,
                            Account {
                                owner_id,
                                email,
                                dept: "HR".into(),
                                enabled: true,
                            },
                        );
                    }
                    1 if !logins.is_empty() => {
                        accounts.remove(rng.pick(&logins));
                    }
                    2 if !logins.is_empty() => {
                        let l = rng.pick(&logins).clone();
                        let g = rng.pick(&["G_IT", "G_SALES", "G_STAFF", "G_X"]).to_string();
                        if members.remove(&(l.clone(), g.clone())).is_none() {
                            members.insert((l, g), ());
                        }
                    }
                    3 if !logins.is_empty() => {
                        let l = rng.pick(&logins).clone();
                        let a = accounts.get_mut(&l).unwrap();
                        a.enabled = !a.enabled;
                        a.dept = rng.pick(&DEPTS).to_string();
                    }
                    _ => {}
                }
            }
            write_app(&env, &accounts, &members);
        }

        // `correlation_keys` written whole in parts (the recomputation below) and patched
        // (these runs): the parts of a table are files like any other.
        let out = env.run(
            "incremental",
            &[],
            &[("IGAFLOW_LOG", "igaflow::store=debug"), PARTS],
        );
        assert!(
            matches!(out.code, Some(0)),
            "iteration {iteration}: {out:?}"
        );
        cleared_lookups += out.stderr.matches("keys cleared by a patch").count();
        let incremental = state(&env.store());
        if iteration > 0 {
            // Really incremental: a scope of changed keys, not "everything".
            let run = run_id_of(&out);
            let kinds = env.query(&format!(
                "select kind from dirty_scope where run_id = '{run}' and kind in ('all', 'run')"
            ));
            assert_eq!(kinds, [["run"]], "iteration {iteration}: {}", out.stdout);
            // Only the accounts whose correlation may have changed are correlated again.
            let message = env.query(&format!(
                "select message from task_runs where run_id = '{run}' and task = 'roles'"
            ));
            let again: usize = message[0][0]
                .split("; ")
                .find_map(|part| part.strip_suffix(" account(s) correlated again"))
                .unwrap_or_else(|| panic!("iteration {iteration}: {message:?}"))
                .parse()
                .unwrap();
            assert!(
                again < accounts.len(),
                "iteration {iteration}: {again} of {} accounts correlated again",
                accounts.len()
            );
        }

        // The same state, recomputed from scratch on a copy of the store.
        let copy = env.path(&format!("copy{iteration}"));
        copy_dir(&env.path("store"), &copy);
        let copy_s = copy.to_string_lossy().into_owned();
        let pipeline = env.pipeline();
        igaflow(
            &["run", &pipeline, "--job", "recompute", "--store", &copy_s],
            &[PARTS],
        )
        .expect_code(0);
        let complete = state(&copy_s);
        // The role model's counts (linked, ambiguous, conflicting) and its warnings are the
        // complete recomputation's too.
        let counts = |store: &str| -> Vec<String> {
            let message = query(
                store,
                "select message from task_runs where task = 'roles' order by started_at desc limit 1",
            );
            message[0][0]
                .split("; ")
                .filter(|part| part.contains("linked") || part.contains("another owner"))
                .map(str::to_string)
                .collect()
        };
        let (dirty_counts, complete_counts) = (counts(&env.store()), counts(&copy_s));
        assert!(
            dirty_counts.iter().any(|c| c.starts_with("app_user: ")),
            "iteration {iteration}: {dirty_counts:?}"
        );
        assert_eq!(dirty_counts, complete_counts, "iteration {iteration}");
        for (name, _, _) in COMPARED {
            assert_eq!(
                incremental.get(name),
                complete.get(name),
                "iteration {iteration}: `{name}` differs from a complete recomputation"
            );
        }
        std::fs::remove_dir_all(&copy).unwrap();
    }
    // The orders task's lookups of the owners the role model had just patched skipped the
    // files the patch had cleared of them (and met the checks above).
    assert!(cleared_lookups > 0, "no lookup skipped a cleared file");
    // The store has `deletion_vectors`: the dirty tasks patched their tables, and rewrote
    // them whole once patches had piled up (both paths met the checks above).
    for table in ["correlation_keys", "assigned_roles", "person__history"] {
        let commits = delta_commits(&env, table);
        let patches = commits.iter().filter(|c| is_patch(c)).count();
        let rewrites = commits.iter().filter(|c| rewrites_patched(c)).count();
        assert!(
            patches > 0 && rewrites > 0,
            "{table}: {patches} patches, {rewrites} rewrites of a patched table"
        );
    }
}

/// A dirty classification after a role model that is not dirty (so no list of the accounts
/// whose correlation changed): an account relinked by its owner's change alone (the account
/// itself untouched) is classified again, as a complete recomputation would.
#[test]
fn dirty_classification_follows_accounts_relinked_by_a_plain_role_model() {
    let env = Env::new();
    let plain = pipeline().replace(
        "[[job]]\nname = \"recompute\"",
        r#"[[job]]
name = "plain_roles"
[[job.task]]
name = "sync_hr"
type = "synchronize"
connector = "hr"
mode = "incremental"
[[job.task]]
name = "flag"
type = "set_recently_modified_flag"
[[job.task]]
name = "keys"
type = "compute_correlation_keys"
dirty = true
[[job.task]]
name = "roles"
type = "compute_role_model"
[[job.task]]
name = "classify"
type = "update_classification"
dirty = true
[[job.task]]
name = "orders"
type = "generate_provisioning_orders"
[[job]]
name = "recompute""#,
    );
    assert!(plain.contains("plain_roles"));
    env.write_pipeline(&plain);
    env.write(
        "exports/hr/persons.csv",
        "command,id,dept,status,mail\ninsert,P01,IT,active,a@x.com\ninsert,P02,IT,active,b@x.com\n",
    );
    let mut accounts = BTreeMap::new();
    let account = |owner: &str, email: &str| Account {
        owner_id: owner.into(),
        email: email.into(),
        dept: "IT".into(),
        enabled: true,
    };
    accounts.insert("u01".to_string(), account("P01", "a@x.com"));
    // Nobody's yet: an orphan.
    accounts.insert("u09".to_string(), account("", "c@x.com"));
    write_app(&env, &accounts, &BTreeMap::new());
    env.run("incremental", &[], &[]).expect_code(0);
    let class =
        |env: &Env| env.scalar("select class from classification where account_key = 'u09'");
    assert_eq!(class(&env), "orphan");

    // P02 takes u09's mail: u09 now correlates with P02, though u09 itself did not change.
    env.write(
        "exports/hr/persons.csv",
        "command,id,dept,status,mail\nupdate,P02,IT,active,c@x.com\n",
    );
    let out = env.run("plain_roles", &[], &[]);
    out.expect_code(0);
    let run = run_id_of(&out);
    assert_eq!(
        env.query(&format!(
            "select kind from dirty_scope where run_id = '{run}' and kind in ('all', 'run', 'correlated')"
        )),
        [["run"]],
        "a dirty scope without the role model's list: {}",
        out.stdout
    );
    assert_eq!(
        env.scalar("select status from correlations where account_key = 'u09'"),
        "linked"
    );
    assert_eq!(class(&env), "app_user");
}

/// The demo pipeline plus `incremental_plain`: the incremental job's tasks, none of them dirty
/// (the same pipeline file, so the same config hash).
fn contoso_with_plain_incremental() -> String {
    let mut text = contoso_pipeline_text();
    let incremental = &text[text.find("name = \"incremental\"").unwrap()..];
    let incremental = &incremental[..incremental[1..]
        .find("[[job]]")
        .map_or(incremental.len(), |i| i + 1)];
    let plain = incremental
        .replace("name = \"incremental\"", "name = \"incremental_plain\"")
        .replace("dirty = true", "dirty = false");
    text.push_str(&format!("\n[[job]]\n{plain}"));
    text
}

/// An anonymization scrubs the personal values in `correlation_keys` after the role model of
/// its run, and removes the older versions: the keys the committed correlations came from
/// (the version that role model read) are gone. The next dirty role model correlates every
/// account instead of the scoped ones, and its tables equal those of the same job run with no
/// task dirty.
#[test]
fn after_a_scrub_of_the_correlation_keys_every_account_is_correlated_again() {
    let env = Env::new();
    env.write_pipeline(&contoso_with_plain_incremental());
    env.run("complete", &[], &[("CONTOSO_DAY", "day1")])
        .expect_code(0);
    let role_model_message = |run: &str| {
        env.scalar(&format!(
            "select message from task_runs where run_id = '{run}' and task = 'role_model'"
        ))
    };

    // Round 0: the watermark is the complete run, nothing scrubbed since: scoped.
    let round0 = env.run("incremental", &[], &[("CONTOSO_DAY", "incremental")]);
    round0.expect_code(0);
    assert!(
        role_model_message(&run_id_of(&round0)).contains("account(s) correlated again"),
        "{}",
        round0.stdout
    );
    // That run scrubbed the keys (a floor on the table).
    let catalogs = env.path("store/_igaflow/catalog");
    let newest = std::fs::read_dir(&catalogs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    let catalog: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(newest).unwrap()).unwrap();
    assert!(
        catalog["floors"]["correlation_keys"].is_u64(),
        "no floor on correlation_keys: {catalog}"
    );
    // The scrubbed owners' computed columns are computed from their anonymized columns, in
    // the table and in its open history version, as a synchronization would compute them.
    assert_eq!(
        env.scalar("select count(*) from anonymized_owners where status = 5"),
        "2"
    );
    for table in ["person", "person__history"] {
        let stale = env.query(&format!(
            "select employee_id, login, display_name from {table} where employee_id in (select owner_key from anonymized_owners) and ((login is distinct from lower(substr(first_name, 1, 1) || last_name)) or (display_name is distinct from (first_name || ' ' || last_name)))"
        ));
        assert!(stale.is_empty(), "{table}: {stale:?}");
    }

    // Round 1: every account correlated again, and the same tables as without dirty tasks.
    let copy = env.path("plain");
    copy_dir(&env.path("store"), &copy);
    let round1 = env.run("incremental", &[], &[("CONTOSO_DAY", "incremental")]);
    round1.expect_code(0);
    let message = role_model_message(&run_id_of(&round1));
    assert!(!message.contains("correlated again"), "{message}");
    let copy_s = copy.to_string_lossy().into_owned();
    igaflow(
        &[
            "run",
            &env.pipeline(),
            "--job",
            "incremental_plain",
            "--store",
            &copy_s,
        ],
        &[("CONTOSO_DAY", "incremental")],
    )
    .expect_code(0);
    let (dirty, plain) = (state(&env.store()), state(&copy_s));
    for (name, _, _) in COMPARED {
        assert_eq!(dirty.get(name), plain.get(name), "`{name}` differs");
    }
}

#[test]
fn dirty_orders_include_the_accounts_update_identities_acted_on_in_the_run() {
    // The demo's incremental job against the same tasks without `dirty`, from one store left
    // by day 1 and day 2: update_identities starts anonymizations (status 3) and deactivates
    // accounts whose owners the change set did not touch; their orders belong to this run.
    let env = Env::new();
    env.write_pipeline(&contoso_with_plain_incremental());
    for day in ["day1", "day2"] {
        env.run("complete", &[], &[("CONTOSO_DAY", day)])
            .expect_code(0);
    }
    let copy = env.path("plain");
    copy_dir(&env.path("store"), &copy);
    let copy_s = copy.to_string_lossy().into_owned();
    env.run("incremental", &[], &[("CONTOSO_DAY", "incremental")])
        .expect_code(0);
    igaflow(
        &[
            "run",
            &env.pipeline(),
            "--job",
            "incremental_plain",
            "--store",
            &copy_s,
        ],
        &[("CONTOSO_DAY", "incremental")],
    )
    .expect_code(0);
    // Order ids are content hashes: the same pending orders have the same ids in both stores.
    let pending = "select order_id, change_type, account_key from provisioning_orders \
                   where state = 'pending' order by order_id";
    let (dirty, plain) = (query(&env.store(), pending), query(&copy_s, pending));
    assert!(!plain.is_empty());
    assert_eq!(dirty, plain);
}

#[test]
fn a_dry_run_of_the_incremental_job_shows_what_the_real_run_does() {
    // The dirty tasks of a dry run see the keys its synchronization changed (staged, not
    // committed): the same owners changed and the same orders as the real run.
    let env = Env::new();
    env.write_pipeline(&contoso_pipeline_text());
    env.run("complete", &[], &[("CONTOSO_DAY", "day1")])
        .expect_code(0);
    let day = [("CONTOSO_DAY", "incremental")];
    let dry = env.run("incremental", &["--dry-run"], &day);
    dry.expect_code(0);
    let real = env.run("incremental", &[], &day);
    real.expect_code(0);
    // `recently_modified  succeeded  0.30  0  13  13 owner(s) …`: the task line from its status on.
    let line = |out: &Out, task: &str| -> String {
        let l = out
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("{task} ")))
            .unwrap_or_else(|| panic!("no `{task}` line in {}", out.stdout));
        let fields: Vec<&str> = l.split_whitespace().collect();
        // status, changes and the message's first words (the seconds differ).
        format!("{} {} {}", fields[1], fields[4], fields[5..8].join(" "))
    };
    for task in ["recently_modified", "role_model", "orders"] {
        assert_eq!(line(&dry, task), line(&real, task), "{task}");
    }
    assert!(
        line(&real, "orders").contains("order(s)"),
        "{}",
        real.stdout
    );
}

#[test]
fn a_manual_assignment_removed_from_the_file_goes_in_a_dirty_run() {
    let env = Env::new();
    env.write_pipeline(MANUAL_DIRTY);
    env.write(
        "exports/hr/persons.csv",
        "id,dept\nP1,A\nP2,X\nP3,F\nP4,B\n",
    );
    env.write("exports/app/accounts.csv", "k,emp\n");
    env.write("exports/app/accounts2.csv", "k,emp\n");
    env.write(
        "pipeline/assign.csv",
        "owner_key,role,start_date,end_date\nP1,vpn,2026-01-01,\nP4,bundle,2026-01-01,\n",
    );
    let as_of = ["--as-of", "2026-06-30"];
    env.run("complete", &as_of, &[]).expect_code(0);
    let manual = "select owner_key, role from assigned_roles where origin = 'manual' order by owner_key, role";
    assert_eq!(
        env.query(manual),
        [["P1", "vpn"], ["P4", "fin"], ["P4", "vpn"]]
    );
    // P1's line goes; the change set touches only P2.
    env.write(
        "pipeline/assign.csv",
        "owner_key,role,start_date,end_date\nP4,bundle,2026-01-01,\n",
    );
    env.write("exports/inc/persons.csv", "command,id,dept\nupdate,P2,X\n");
    env.run("incremental", &as_of, &[("DAY", "inc")])
        .expect_code(0);
    assert_eq!(env.query(manual), [["P4", "fin"], ["P4", "vpn"]]);
    assert_eq!(
        env.scalar("select count(*) from assigned_resources where owner_key = 'P1'"),
        "0"
    );
}

const MANUAL_DIRTY: &str = r#"name = "manual_dirty"
[connector.hr]
exports = "../exports/${DAY:-hr}"
[connector.app]
exports = "../exports/app"

[[entity]]
name = "person"
connector = "hr"
file = "persons.csv"
key = "id"
columns = { id = "string", dept = "string" }

[[entity]]
name = "acc"
connector = "app"
file = "accounts.csv"
key = "k"
columns = { k = "string", emp = "string" }

[[entity]]
name = "acc2"
connector = "app"
file = "accounts2.csv"
key = "k"
columns = { k = "string", emp = "string" }

[[role]]
name = "vpn"
[[role]]
name = "fin"
rule = "dept = 'F'"
[[composite_role]]
name = "bundle"
roles = ["vpn", "fin"]

[manual_assignments]
file = "assign.csv"

[[resource_type]]
name = "r1"
owner = "person"
target = "acc"
roles = ["vpn"]
correlation = [ { target = "emp", owner = "id" } ]
[resource_type.scalars]
emp = "id || ''"

[[resource_type]]
name = "r2"
owner = "person"
target = "acc2"
rule = "dept = 'X'"
roles = ["vpn"]
correlation = [ { target = "emp", owner = "id" } ]
[resource_type.scalars]
emp = "id || ''"

[[job]]
name = "complete"
[[job.task]]
name = "sync_hr"
type = "synchronize"
connector = "hr"
[[job.task]]
name = "sync_app"
type = "synchronize"
connector = "app"
depends_on = []
[[job.task]]
name = "keys"
type = "compute_correlation_keys"
depends_on = ["sync_hr", "sync_app"]
[[job.task]]
name = "roles"
type = "compute_role_model"
[[job.task]]
name = "orders"
type = "generate_provisioning_orders"

[[job]]
name = "incremental"
[[job.task]]
name = "sync_hr"
type = "synchronize"
connector = "hr"
mode = "incremental"
[[job.task]]
name = "recently_modified"
type = "set_recently_modified_flag"
[[job.task]]
name = "keys"
type = "compute_correlation_keys"
dirty = true
[[job.task]]
name = "roles"
type = "compute_role_model"
dirty = true
[[job.task]]
name = "orders"
type = "generate_provisioning_orders"
dirty = true
"#;

/// Dirty tasks commit deletion vectors and the recomputed rows instead of rewriting their
/// tables. A run killed after either Delta commit of such a patch (the new rows, then the
/// deletion vectors), before the catalog names them, leaves the role model's tables as
/// committed; the re-run undoes the uncommitted versions and reaches the uninterrupted run's
/// tables.
#[test]
fn a_dirty_run_killed_inside_its_patch_leaves_the_committed_state_and_converges() {
    let day = [("CONTOSO_DAY", "incremental")];
    let text = format!(
        "{}\n[store]\ndeletion_vectors = true\n",
        contoso_pipeline_text()
    );
    let base = Env::new();
    base.write_pipeline(&text);
    base.run("complete", &[], &[("CONTOSO_DAY", "day1")])
        .expect_code(0);
    let old = state(&base.store());

    let reference = Env::new();
    reference.write_pipeline(&text);
    copy_dir(&base.path("store"), &reference.path("store"));
    reference.run("incremental", &[], &day).expect_code(0);
    let new = state(&reference.store());
    assert_ne!(old, new, "the change set changes the role model");
    // The dirty role model patched its tables (`correlation_keys` and `person` were patched
    // too, but the run's history anonymization rewrites them and removes their older
    // versions; `correlations` recomputed equal is not written). Without
    // `deletion_vectors` (the default) the same run rewrites them, to the same result: the
    // tables stay readable by Delta readers without deletion vectors.
    let plain = Env::new();
    plain.write_pipeline(&contoso_pipeline_text());
    copy_dir(&base.path("store"), &plain.path("store"));
    plain.run("incremental", &[], &day).expect_code(0);
    assert_eq!(state(&plain.store()), new);
    for table in ["assigned_links", "assigned_roles", "assigned_scalars"] {
        let patches = |env: &Env| {
            delta_commits(env, table)
                .iter()
                .filter(|c| is_patch(c))
                .count()
        };
        assert!(patches(&reference) > 0, "{table}");
        assert_eq!(patches(&plain), 0, "{table}");
    }
    // `correlations`' recomputed rows are as many as the replaced ones and equal to them:
    // read back and compared, they leave the table unwritten.
    assert_eq!(
        delta_commits(&reference, "correlations").len(),
        delta_commits(&base, "correlations").len(),
        "`correlations` recomputed equal was written"
    );
    // Counting reads the deletion vectors (no row count taken from file statistics).
    let count = query(&reference.store(), "select count(*) from correlation_keys");
    assert_eq!(count[0][0], new["correlation_keys"].len().to_string());
    let links = |store: &str| {
        query(
            store,
            "select resource_type, owner_key, link, value from assigned_links order by 1, 2, 3, 4",
        )
    };
    let (old_links, new_links) = (links(&base.store()), links(&reference.store()));
    assert_ne!(old_links, new_links);
    assert_eq!(links(&plain.store()), new_links);

    for failpoint in [
        "patch.assigned_links.appended",
        "patch.assigned_links.deleted",
    ] {
        let env = Env::new();
        env.write_pipeline(&text);
        copy_dir(&base.path("store"), &env.path("store"));
        let out = env.run(
            "incremental",
            &[],
            &[day[0], ("IGAFLOW_FAILPOINT", failpoint)],
        );
        assert_eq!(out.signal, Some(9), "{failpoint}: {out:?}");
        // The tasks before the role model committed; the role model's tables are as before.
        let after = state(&env.store());
        for table in ["correlations", "assigned_roles"] {
            assert_eq!(after[table], old[table], "{failpoint}: `{table}` changed");
        }
        assert_eq!(links(&env.store()), old_links, "{failpoint}");
        env.run("incremental", &[], &day).expect_code(0);
        assert_eq!(state(&env.store()), new, "{failpoint}: the re-run differs");
        assert_eq!(links(&env.store()), new_links, "{failpoint}");
    }
}

/// A dirty role model with nothing to change ends `no_changes`, as a complete one does: the
/// scope it hands to the orders task (written every time) is bookkeeping, not a result, so a
/// `run_if = "changed"` task after it is skipped.
#[test]
fn a_dirty_role_model_with_nothing_to_change_is_no_changes() {
    let env = Env::new();
    copy_dir(
        &repo().join("datasets/cases/lifecycle"),
        &env.path("pipeline"),
    );
    let text = std::fs::read_to_string(env.path("pipeline/pipeline.toml")).unwrap();
    env.write_pipeline(&format!(
        "{text}
[[job]]
name = \"incremental\"
[[job.task]]
name = \"sync_hr\"
type = \"synchronize\"
connector = \"hr\"
mode = \"incremental\"
[[job.task]]
name = \"rm\"
type = \"set_recently_modified_flag\"
[[job.task]]
name = \"keys\"
type = \"compute_correlation_keys\"
dirty = true
[[job.task]]
name = \"roles\"
type = \"compute_role_model\"
dirty = true
depends_on = [\"rm\", \"keys\"]
[[job.task]]
name = \"classify\"
type = \"update_classification\"
dirty = true
[[job.task]]
name = \"orders\"
type = \"generate_provisioning_orders\"
dirty = true
depends_on = [\"roles\", \"classify\"]
[[job.task]]
name = \"after\"
type = \"invoke_command\"
command = [\"true\"]
depends_on = [\"roles\"]
run_if = \"changed\"
"
    ));
    // An empty HR change set.
    env.write(
        "pipeline/empty/hr/persons.csv",
        "command,id,name,dept,status,mail\n",
    );
    std::fs::create_dir_all(env.path("pipeline/empty/app")).unwrap();
    env.run("complete", &[], &[("CASE_DAY", "day1")])
        .expect_code(0);
    for _ in 0..2 {
        let out = env.run("incremental", &[], &[("CASE_DAY", "empty")]);
        out.expect_code(0);
        let run = run_id_of(&out);
        let status = |task: &str| {
            env.scalar(&format!(
                "select status from task_runs where run_id = '{run}' and task = '{task}'"
            ))
        };
        // The dirty path ran (it reports the accounts it correlated again).
        assert!(
            out.stdout.contains("account(s) correlated again"),
            "{}",
            out.stdout
        );
        assert_eq!(status("roles"), "no_changes", "{}", out.stdout);
        assert_eq!(status("after"), "skipped", "{}", out.stdout);
    }
}
