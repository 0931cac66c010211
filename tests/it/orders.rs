//! Provisioning orders beyond the golden cases: thresholds, hostile values, determinism, the
//! Parquet file, dry runs.

use std::path::Path;

use crate::cases::emitted_orders;
use crate::common::*;

/// A pipeline like `datasets/cases/lifecycle` with the resource type's rule given.
fn app_pipeline(rt_rule: &str) -> String {
    let text =
        std::fs::read_to_string(repo().join("datasets/cases/lifecycle/pipeline.toml")).unwrap();
    let text = text.replace(
        "exports = \"${CASE_DAY:-day1}/hr\"",
        "exports = \"../exports/hr\"",
    );
    let text = text.replace(
        "exports = \"${CASE_DAY:-day1}/app\"",
        "exports = \"../exports/app\"",
    );
    text.replace(
        "rule = \"status = 'active'\"",
        &format!("rule = \"{rt_rule}\""),
    )
}

/// `text` with a second resource type `app_admin` on the same accounts (before the
/// classification), assigned to nobody and linking nobody, with `extra` lines.
fn with_admin_type(text: &str, extra: &str) -> String {
    let admin = format!(
        r#"
[[resource_type]]
name = "app_admin"
owner = "person"
target = "account"
rule = "dept = 'nobody'"
{extra}correlation = [ {{ target = "login", owner = "'adm_' || id" }} ]

[[classification]]"#
    );
    text.replacen("\n[[classification]]", &admin, 1)
}

fn write_company(env: &Env, n: usize) {
    let mut persons = String::from("id,name,dept,status,mail\n");
    let mut accounts = String::from("login,owner_id,email,dept,enabled\n");
    let mut members = String::from("login,gid\n");
    for i in 0..n {
        let dept = if i % 2 == 0 { "Sales" } else { "IT" };
        let group = if i % 2 == 0 { "G_SALES" } else { "G_IT" };
        persons.push_str(&format!("P{i:04},User{i:04},{dept},active,u{i:04}@x.com\n"));
        accounts.push_str(&format!("user{i:04},P{i:04},u{i:04}@x.com,{dept},true\n"));
        members.push_str(&format!("user{i:04},{group}\n"));
    }
    env.write("exports/hr/persons.csv", persons);
    env.write("exports/app/accounts.csv", accounts);
    env.write("exports/app/groups.csv", "gid\nG_IT\nG_SALES\n");
    env.write("exports/app/members.csv", members);
}

/// The orders task's status and message in run `run`.
fn orders_task(env: &Env, run: &str) -> (String, String) {
    let row = env.query(&format!(
        "select status, message from task_runs where run_id = '{run}' and task = 'orders'"
    ));
    (row[0][0].clone(), row[0][1].clone())
}

fn orders_dir(env: &Env, run_id: &str) -> std::path::PathBuf {
    env.path("store/_orders").join(run_id)
}

#[test]
fn a_rule_change_disabling_half_the_accounts_is_blocked_until_forced() {
    let env = Env::new();
    env.write_pipeline(&app_pipeline("status = 'active'"));
    write_company(&env, 1000);
    let first = env.run("complete", &[], &[]);
    first.expect_code(0);
    assert!(
        first.stdout.contains("no_changes") || first.stdout.contains("0 order(s)"),
        "{}",
        first.stdout
    );

    // The broken rule keeps only Sales: 500 of 1000 linked accounts would be disabled.
    env.write_pipeline(&app_pipeline("dept = 'Sales'"));
    let blocked = env.run("complete", &[], &[]);
    blocked.expect_code(3);
    let run = run_id_of(&blocked);
    assert!(blocked.stdout.contains("blocked"), "{}", blocked.stdout);
    let (_, message) = orders_task(&env, &run);
    assert!(
        message.contains("500 of 1000") && message.contains("50.0%") && message.contains("--force"),
        "{message}"
    );
    assert!(
        message.contains("500 order(s) stored as `blocked`"),
        "{message}"
    );
    assert!(
        !orders_dir(&env, &run).exists(),
        "a blocked run wrote order files"
    );
    assert_eq!(
        env.query("select state, count(*) from provisioning_orders group by state"),
        [["blocked", "500"]]
    );

    let forced = env.run("complete", &["--force"], &[]);
    forced.expect_code(0);
    let run = run_id_of(&forced);
    let orders = emitted_orders(&env.store(), &run);
    assert_eq!(orders.len(), 500);
    assert!(
        orders
            .iter()
            .all(|o| o["attributes"]["enabled"]["new"] == false)
    );
    assert_eq!(
        env.query("select state, count(*) from provisioning_orders group by state"),
        [["pending", "500"]]
    );
    // `run_id` is the run that first emitted them: the forced one, not the blocked one.
    assert_eq!(
        env.query("select run_id, count(*) from provisioning_orders group by run_id"),
        [[run.as_str(), "500"]]
    );
    // The forced run released them: its orders task reports them.
    let status = |run: &str| orders_task(&env, run).0;
    assert_eq!(status(&run), "succeeded");

    // Released orders are not held back again while they wait for fulfilment: the next run
    // (same rule, the accounts not disabled yet) emits them again without --force.
    let next = env.run("complete", &[], &[]);
    next.expect_code(0);
    assert_eq!(emitted_orders(&env.store(), &run_id_of(&next)).len(), 500);
    assert_eq!(status(&run_id_of(&next)), "no_changes");
    assert_eq!(
        env.query("select state, count(*) from provisioning_orders group by state"),
        [["pending", "500"]]
    );

    // A further mass change is blocked again, the released orders staying pending.
    env.write_pipeline(&app_pipeline("dept = 'None'"));
    let again = env.run("complete", &[], &[]);
    again.expect_code(3);
    assert_eq!(
        env.query("select state, count(*) from provisioning_orders group by state order by state"),
        [["blocked", "500"], ["pending", "500"]]
    );
}

/// Orphans deleted count against `max_deleted_percent` like lost accounts (the base stays the
/// linked accounts), and the message says they are orphans, not linked accounts.
#[test]
fn orphans_to_delete_count_against_the_threshold_and_are_named_so() {
    let env = Env::new();
    let text = app_pipeline("status = 'active'").replacen(
        "on_lost = \"disable\"",
        "on_lost = \"disable\"\norphans = \"delete\"",
        1,
    );
    assert!(text.contains("orphans = \"delete\""));
    env.write_pipeline(&text);
    write_company(&env, 100);
    env.run("complete", &[], &[]).expect_code(0);

    // 40 accounts nobody owns appear in the target: 40% of the 100 linked.
    let mut accounts = std::fs::read_to_string(env.path("exports/app/accounts.csv")).unwrap();
    for i in 0..40 {
        accounts.push_str(&format!("stray{i:02},,,Sales,true\n"));
    }
    env.write("exports/app/accounts.csv", accounts);
    let blocked = env.run("complete", &[], &[]);
    blocked.expect_code(3);
    let (status, message) = orders_task(&env, &run_id_of(&blocked));
    assert_eq!(status, "blocked");
    assert!(
        message.contains(
            "40 accounts deleted or disabled, 40 of them orphans, against 100 linked accounts (40.0% > max_deleted_percent 30)"
        ),
        "{message}"
    );
    let forced = env.run("complete", &["--force"], &[]);
    forced.expect_code(0);
    let orders = emitted_orders(&env.store(), &run_id_of(&forced));
    assert_eq!(orders.len(), 40);
    assert!(
        orders
            .iter()
            .all(|o| o["change_type"] == "Deleted" && o["owner"].is_null())
    );
}

/// A value made to break SQL built by string splicing, and one that is plain.
const HOSTILE: &str = "CN=Q\"uote';DROP TABLE person;--' OR 1=1 --,OU=G";

fn hostile_pipeline(group: &str) -> String {
    app_pipeline("status = 'active'").replace(
        "{ role = \"it\", target = \"G_IT\" }",
        &format!(
            "{{ role = \"it\", target = \"G_IT\" }}, {{ role = \"sales\", target = {} }}",
            toml_string(group)
        ),
    )
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[test]
fn hostile_values_flow_through_unchanged_and_touch_no_other_order() {
    let mut results = Vec::new();
    for group in [HOSTILE, "G_PLAIN"] {
        let env = Env::new();
        env.write_pipeline(&hostile_pipeline(group));
        env.write("exports/hr/persons.csv", "id,name,dept,status,mail\nP1,Ann,Sales,active,ann@x.com\nP2,Bob,IT,active,bob@x.com\nP'3,O'Hara; --,IT,active,x' OR '1'='1\n");
        env.write("exports/app/accounts.csv", "login,owner_id,email,dept,enabled\nann,P1,ann@x.com,Sales,true\nbob,P2,bob@x.com,IT,true\n");
        env.write(
            "exports/app/groups.csv",
            format!("gid\nG_IT\nG_SALES\n{}\n", csv_field(group)),
        );
        env.write(
            "exports/app/members.csv",
            "login,gid\nann,G_SALES\nbob,G_IT\n",
        );
        let out = env.run("complete", &[], &[]);
        out.expect_code(0);
        let orders = emitted_orders(&env.store(), &run_id_of(&out));
        assert_eq!(
            env.scalar("select count(*) from person"),
            "3",
            "the person table survived"
        );
        let ids =
            env.query("select owner_key, order_id from provisioning_orders order by owner_key");
        results.push((orders, ids));
    }
    let (hostile, plain) = (&results[0], &results[1]);
    // Ann's order adds the hostile group, byte for byte.
    let ann = hostile
        .0
        .iter()
        .find(|o| o["owner"]["key"] == "P1")
        .unwrap();
    assert_eq!(ann["links"]["member"]["add"], serde_json::json!([HOSTILE]));
    // Every other order is identical, down to its id.
    let others = |r: &(Vec<serde_json::Value>, Vec<Vec<String>>)| -> Vec<Vec<String>> {
        r.1.iter().filter(|row| row[0] != "P1").cloned().collect()
    };
    assert_eq!(others(hostile), others(plain));
    assert_eq!(
        others(hostile).len(),
        1,
        "the joiner P'3 gets an order: {:?}",
        hostile.1
    );
    let joiner = hostile
        .0
        .iter()
        .find(|o| o["owner"]["key"] == "P'3")
        .unwrap();
    assert_eq!(joiner["attributes"]["email"]["new"], "x' OR '1'='1");
}

#[test]
fn a_link_value_not_in_the_exports_is_emitted_with_a_warning() {
    let env = Env::new();
    env.write_pipeline(&hostile_pipeline("G_GHOST"));
    env.write(
        "exports/hr/persons.csv",
        "id,name,dept,status,mail\nP1,Ann,Sales,active,ann@x.com\nP2,Bob,IT,active,bob@x.com\n",
    );
    env.write(
        "exports/app/accounts.csv",
        "login,owner_id,email,dept,enabled\nann,P1,ann@x.com,Sales,true\nbob,P2,bob@x.com,IT,true\n",
    );
    env.write("exports/app/groups.csv", "gid\nG_IT\nG_SALES\n");
    env.write(
        "exports/app/members.csv",
        "login,gid\nann,G_SALES\nbob,G_IT\n",
    );
    let out = env.run("complete", &[], &[]);
    out.expect_code(0);
    let run = run_id_of(&out);
    let orders = emitted_orders(&env.store(), &run);
    let ann: Vec<_> = orders
        .iter()
        .filter(|o| o["resource_key"] == "ann")
        .collect();
    assert_eq!(ann.len(), 1, "{orders:?}");
    let added = ann[0]["links"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()["add"]
        .clone();
    assert!(
        added.as_array().unwrap().iter().any(|v| v == "G_GHOST"),
        "still desired and emitted: {orders:?}"
    );
    let (status, message) = orders_task(&env, &run);
    assert_eq!(status, "warning", "{message}");
    assert!(
        message.contains("not in the exports") && message.contains("G_GHOST"),
        "{message}"
    );

    // Once the group is exported, the same order carries no warning.
    env.write("exports/app/groups.csv", "gid\nG_IT\nG_SALES\nG_GHOST\n");
    std::fs::remove_dir_all(env.store()).unwrap();
    let out = env.run("complete", &[], &[]);
    out.expect_code(0);
    let run = run_id_of(&out);
    let (status, message) = orders_task(&env, &run);
    assert_eq!(status, "succeeded", "{message}");
    assert!(!message.contains("not in the exports"), "{message}");
}

#[test]
fn an_order_needed_again_after_it_went_inactive_is_pending_and_new_again() {
    let env = Env::new();
    env.write_pipeline(&hostile_pipeline("G_PLAIN"));
    env.write(
        "exports/hr/persons.csv",
        "id,name,dept,status,mail\nP1,Ann,Sales,active,ann@x.com\n",
    );
    env.write(
        "exports/app/accounts.csv",
        "login,owner_id,email,dept,enabled\nann,P1,ann@x.com,Sales,true\n",
    );
    env.write("exports/app/groups.csv", "gid\nG_IT\nG_SALES\nG_PLAIN\n");
    let without = "login,gid\nann,G_SALES\n";
    let with = "login,gid\nann,G_SALES\nann,G_PLAIN\n";
    let message = |out: &Out| orders_task(&env, &run_id_of(out)).1;
    let states = || env.query("select state from provisioning_orders order by order_id");
    // Ann lacks G_PLAIN: one order to add it.
    env.write("exports/app/members.csv", without);
    let first = env.run("complete", &[], &[]);
    first.expect_code(0);
    assert!(message(&first).contains("1 new"), "{}", message(&first));
    assert_eq!(states(), [["pending"]]);
    // Someone added it by hand: the order is no longer needed.
    env.write("exports/app/members.csv", with);
    let second = env.run("complete", &[], &[]);
    second.expect_code(0);
    assert!(
        message(&second).contains("1 no longer needed"),
        "{}",
        message(&second)
    );
    assert_eq!(states(), [["inactive"]]);
    // Removed again: the same order (same id) is pending again, and new in this run.
    env.write("exports/app/members.csv", without);
    let third = env.run("complete", &[], &[]);
    third.expect_code(0);
    assert!(message(&third).contains("1 new"), "{}", message(&third));
    assert_eq!(states(), [["pending"]]);
}

fn csv_field(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The order file with the run id and generation time blanked.
fn normalized_file(path: &Path, run_id: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.replace(run_id, "RUN")
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("\"generated_at\"") {
                "  \"generated_at\": \"T\","
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn same_inputs_give_byte_identical_orders_and_ids() {
    let a = Env::new();
    a.write_pipeline(&contoso_pipeline_text());
    let first = a.run("complete", &[], &[("CONTOSO_DAY", "day2")]);
    first.expect_code(0);
    let run1 = run_id_of(&first);
    let second = a.run("complete", &[], &[("CONTOSO_DAY", "day2")]);
    second.expect_code(0);
    let run2 = run_id_of(&second);
    let message = a.scalar(&format!(
        "select message from task_runs where run_id = '{run2}' and task = 'orders'"
    ));
    assert!(message.contains("(0 new"), "{message}");
    let f1 = normalized_file(&orders_dir(&a, &run1).join("ad.json"), &run1);
    let f2 = normalized_file(&orders_dir(&a, &run2).join("ad.json"), &run2);
    assert_eq!(f1, f2);
    assert!(
        f1.matches("\"order_id\"").count() > 50,
        "the demo emits orders"
    );

    // Another store, same exports: the same bytes.
    let b = Env::new();
    b.write_pipeline(&contoso_pipeline_text());
    let other = b.run("complete", &[], &[("CONTOSO_DAY", "day2")]);
    other.expect_code(0);
    let run3 = run_id_of(&other);
    assert_eq!(
        normalized_file(&orders_dir(&b, &run3).join("ad.json"), &run3),
        f1
    );
}

#[test]
fn json_orders_match_the_spec_shape_and_the_parquet_file() {
    let env = Env::new();
    env.write_pipeline(&contoso_pipeline_text());
    env.run("complete", &[], &[("CONTOSO_DAY", "day1")])
        .expect_code(0);
    let out = env.run("complete", &[], &[("CONTOSO_DAY", "day2")]);
    out.expect_code(0);
    let run = run_id_of(&out);
    let dir = orders_dir(&env, &run);
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("ad.json")).unwrap()).unwrap();
    let keys: Vec<&String> = doc.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["connector", "generated_at", "orders", "run_id"]);
    let orders = doc["orders"].as_array().unwrap();
    for o in orders {
        let fields: Vec<&String> = o.as_object().unwrap().keys().collect();
        assert_eq!(
            fields,
            [
                "attributes",
                "change_type",
                "entity",
                "links",
                "order_id",
                "owner",
                "resource_key",
                "resource_type"
            ]
        );
        assert!(["Added", "Modified", "Deleted"].contains(&o["change_type"].as_str().unwrap()));
        for change in o["attributes"].as_object().unwrap().values() {
            assert!(
                change.get("old").is_some() && change.get("new").is_some(),
                "{o}"
            );
        }
    }
    // The mover 000136: department and groups.
    let mover = orders
        .iter()
        .find(|o| o["owner"]["key"] == "000136")
        .unwrap();
    assert_eq!(mover["change_type"], "Modified");
    assert_eq!(
        mover["attributes"]["department"],
        serde_json::json!({"old": "Marketing", "new": "IT"})
    );
    assert!(
        mover["links"]["ad_member_of"]["add"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g == "CN=SG_Dept_IT,OU=Groups,DC=contoso,DC=com")
    );
    // The leaver 000120: disabled (typed number), links kept.
    let leaver = orders
        .iter()
        .find(|o| o["owner"]["key"] == "000120")
        .unwrap();
    assert_eq!(
        leaver["attributes"],
        serde_json::json!({"user_account_control": {"old": 512, "new": 514}})
    );
    assert_eq!(leaver["links"], serde_json::json!({}));
    // An Added order names the account to create in `provisioning_orders` as in the file.
    let added: Vec<(&str, &str)> = orders
        .iter()
        .filter(|o| o["change_type"] == "Added")
        .map(|o| {
            (
                o["order_id"].as_str().unwrap(),
                o["resource_key"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(!added.is_empty(), "day 2 has joiners");
    for (id, key) in added {
        assert_eq!(
            env.scalar(&format!(
                "select account_key from provisioning_orders where order_id = '{id}'"
            )),
            key
        );
    }

    // The Parquet file holds the same orders.
    let file = dir.join("ad.parquet");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rows = rt.block_on(async {
        let ctx = datafusion::prelude::SessionContext::new();
        ctx.register_parquet("o", file.to_str().unwrap(), Default::default())
            .await
            .unwrap();
        ctx.sql("select order_id, change_type, owner_key, resource_key, attributes, links from o")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap()
    });
    let text = datafusion::arrow::util::pretty::pretty_format_batches(&rows)
        .unwrap()
        .to_string();
    let n: usize = rows.iter().map(|b| b.num_rows()).sum();
    assert_eq!(n, orders.len());
    for o in orders {
        assert!(
            text.contains(o["order_id"].as_str().unwrap()),
            "{} missing from the Parquet file",
            o["order_id"]
        );
    }
    let attributes = r#"{"department":{"old":"Marketing","new":"IT"}}"#;
    assert!(text.contains(attributes), "{attributes} not in\n{text}");
}

#[test]
fn dry_run_prints_the_orders_and_commits_nothing() {
    let env = Env::new();
    env.write_pipeline(&contoso_pipeline_text());
    let out = env.run("complete", &["--dry-run"], &[("CONTOSO_DAY", "day1")]);
    out.expect_code(0);
    assert!(
        out.stdout.contains("\"change_type\": \"Added\""),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("14 Added"), "{}", out.stdout);
    let catalog = env.path("store/_igaflow/catalog");
    assert!(
        !catalog.exists() || std::fs::read_dir(&catalog).unwrap().count() == 0,
        "a dry run committed"
    );
    assert!(!env.path("store/_orders").exists());
}

/// Spill-friendly plans (sort-merge joins, what a task falls back to when hash joins exhaust
/// the memory limit; forced here with `IGAFLOW_JOINS=sort-merge`) give the contoso job the
/// same orders, by id, as hash joins.
#[test]
fn spill_friendly_plans_give_the_same_orders() {
    let ids = |joins: Option<&str>| {
        let env = Env::new();
        env.write_pipeline(&contoso_pipeline_text());
        let envs: Vec<(&str, &str)> = joins.map(|j| ("IGAFLOW_JOINS", j)).into_iter().collect();
        let out = env.run("complete", &["--as-of", "2026-11-25"], &envs);
        out.expect_code(0);
        let run = run_id_of(&out);
        let text = std::fs::read_to_string(orders_dir(&env, &run).join("ad.json")).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut ids: Vec<String> = doc["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["order_id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    let normal = ids(None);
    assert!(normal.len() > 50, "{}", normal.len());
    assert_eq!(ids(Some("sort-merge")), normal);
}

#[test]
fn a_desired_value_that_does_not_cast_is_left_out_with_a_warning() {
    // `enabled` is a bool column: IT's desired 'maybe' is not a bool.
    let env = Env::new();
    env.write_pipeline(&app_pipeline("status = 'active'").replace(
        "enabled = \"true\"",
        "enabled = \"CASE WHEN dept = 'IT' THEN 'maybe' ELSE 'false' END\"",
    ));
    write_company(&env, 4);
    let out = env.run("complete", &[], &[]);
    out.expect_code(0);
    let run = run_id_of(&out);
    // Sales accounts are disabled as desired; IT accounts keep their value: no order clears it.
    let orders = emitted_orders(&env.store(), &run);
    let mut touched: Vec<String> = orders
        .iter()
        .map(|o| {
            assert_eq!(
                o["attributes"]["enabled"]["new"], false,
                "only valid values are desired: {o}"
            );
            o["resource_key"].as_str().unwrap().to_string()
        })
        .collect();
    touched.sort();
    assert_eq!(touched, ["user0000", "user0002"], "{orders:?}");
    let roles = env.query(&format!(
        "select status, message from task_runs where run_id = '{run}' and task = 'roles'"
    ));
    assert_eq!(roles[0][0], "warning", "{roles:?}");
    assert!(
        roles[0][1].contains("2 desired value(s) of `enabled` are not a valid bool")
            && roles[0][1].contains("P0001: 'maybe'"),
        "{roles:?}"
    );
    assert_eq!(
        env.scalar("select count(*) from assigned_scalars where attribute = 'enabled'"),
        "2"
    );
}

#[test]
fn assigned_resources_hold_the_desired_scalar_values() {
    let env = Env::new();
    env.write_pipeline(&app_pipeline("status = 'active'"));
    write_company(&env, 2);
    env.run("complete", &[], &[]).expect_code(0);
    let (header, rows) = query_with_header(
        &env.store(),
        "select * from assigned_resources order by owner_key",
    );
    assert_eq!(
        header,
        [
            "resource_type",
            "owner_key",
            "account_key",
            "state",
            "login",
            "email",
            "dept",
            "enabled",
            "owner_id"
        ]
    );
    assert_eq!(
        rows,
        [
            [
                "app_user",
                "P0000",
                "user0000",
                "assigned",
                "user0000",
                "u0000@x.com",
                "Sales",
                "true",
                "P0000"
            ],
            [
                "app_user",
                "P0001",
                "user0001",
                "assigned",
                "user0001",
                "u0001@x.com",
                "IT",
                "true",
                "P0001"
            ],
        ]
    );
}

/// SPEC 5 and 11.15: an account linked by two resource types is classified by the first in file
/// order, and one matched by two classification rules by the first rule in file order (both
/// named so that the first is not the smallest name).
#[test]
fn classification_takes_the_first_resource_type_and_the_first_rule_in_file_order() {
    let env = Env::new();
    let extra_rules = r#"
[[classification]]
target = "account"
name = "zz_first"
rule = "login LIKE 'x%'"

[[classification]]
target = "account"
name = "aa_second"
rule = "login LIKE 'x%'"

[[job]]"#;
    let text = with_admin_type(&app_pipeline("status = 'active'"), "").replacen(
        "\n[[job]]",
        extra_rules,
        1,
    );
    assert!(text.contains("aa_second"));
    env.write_pipeline(&text);
    write_company(&env, 4);
    // P0100 owns one account, which both resource types link: app_user by `owner_id`,
    // app_admin by the `adm_` login. `xray` has no owner and matches both extra rules.
    let persons = std::fs::read_to_string(env.path("exports/hr/persons.csv")).unwrap();
    env.write(
        "exports/hr/persons.csv",
        format!("{persons}P0100,Admin,IT,active,adm@x.com\n"),
    );
    let accounts = std::fs::read_to_string(env.path("exports/app/accounts.csv")).unwrap();
    env.write(
        "exports/app/accounts.csv",
        format!("{accounts}adm_P0100,P0100,adm@x.com,IT,true\nxray,,,IT,true\n"),
    );
    env.run("complete", &[], &[]).expect_code(0);
    assert_eq!(
        env.query(
            "select resource_type, status from correlations \
             where account_key = 'adm_P0100' order by resource_type"
        ),
        [["app_admin", "linked"], ["app_user", "linked"]]
    );
    let expected = [
        ["adm_P0100", "app_user"],
        ["user0001", "app_user"],
        ["xray", "zz_first"],
    ];
    assert_eq!(
        env.query(
            "select account_key, class from classification \
             where account_key in ('adm_P0100', 'xray', 'user0001') order by account_key",
        ),
        expected
    );
}

#[test]
fn an_orphan_of_two_resource_types_gets_one_order_from_the_first() {
    let env = Env::new();
    // A second resource type on the same accounts, linking nobody, that would disable orphans.
    let text = with_admin_type(
        &app_pipeline("status = 'active'").replace(
            "on_lost = \"disable\"",
            "on_lost = \"disable\"\norphans = \"delete\"",
        ),
        "orphans = \"disable\"\ndisable = { enabled = \"false\" }\n",
    );
    env.write_pipeline(&text);
    write_company(&env, 4);
    let accounts = std::fs::read_to_string(env.path("exports/app/accounts.csv")).unwrap();
    env.write(
        "exports/app/accounts.csv",
        format!("{accounts}ghost,NOBODY,ghost@x.com,IT,true\n"),
    );
    env.run("complete", &[], &[]).expect_code(0);
    assert_eq!(
        env.query("select class from classification where account_key = 'ghost'"),
        [["orphan"]]
    );
    // Without the rule, app_admin disabled the account app_user deleted: two orders for one
    // account, of which the fulfillment could only carry out one.
    assert_eq!(
        env.query(
            "select resource_type, change_type from provisioning_orders \
             where account_key = 'ghost'"
        ),
        [["app_user", "Deleted"]]
    );
    // The linked accounts are app_user's, so app_admin has no orders at all.
    assert_eq!(
        env.query("select count(*) from provisioning_orders where resource_type = 'app_admin'"),
        [["0"]]
    );
}

#[test]
fn a_role_model_that_empties_the_assignments_is_a_change() {
    // Every account lost at once (below min_rows: no threshold): the role model's tables
    // become empty, which is a change, so a `run_if = "changed"` orders task runs.
    let env = Env::new();
    let text = app_pipeline("status = 'active'").replace(
        "name = \"orders\"\ntype = \"generate_provisioning_orders\"",
        "name = \"orders\"\ntype = \"generate_provisioning_orders\"\nrun_if = \"changed\"\ndepends_on = [\"roles\", \"classify\"]",
    );
    env.write_pipeline(&text);
    write_company(&env, 4);
    env.run("complete", &[], &[]).expect_code(0);
    env.write_pipeline(&text.replace("rule = \"status = 'active'\"", "rule = \"dept = 'nobody'\""));
    let out = env.run("complete", &[], &[]);
    out.expect_code(0);
    let run = run_id_of(&out);
    let status = |task: &str| {
        env.scalar(&format!(
            "select status from task_runs where run_id = '{run}' and task = '{task}'"
        ))
    };
    assert_eq!(env.scalar("select count(*) from assigned_resources"), "0");
    assert_eq!(status("roles"), "succeeded");
    assert_eq!(status("orders"), "succeeded");
    assert_eq!(
        env.scalar(&format!(
            "select count(*) from provisioning_orders where last_run_id = '{run}' and attributes like '%\"enabled\"%'"
        )),
        "4"
    );
}

/// `assigned_scalars` is stored sorted by (`resource_type`, `owner_key`, `attribute`) and
/// `assigned_resources` by (`resource_type`, `owner_key`) both when their rows come in order
/// from the owner table (a text key, stored in its order) and when they are sorted (a number
/// key, stored in an order that is not its text's: 10 before 9), with the same rows.
#[test]
fn assigned_scalars_are_stored_sorted_for_text_and_number_owner_keys() {
    let mut stored = Vec::new();
    let mut resources = Vec::new();
    for numeric in [false, true] {
        let env = Env::new();
        let mut text = app_pipeline("status = 'active'");
        if numeric {
            text = text.replace("{ id = \"string\",", "{ id = \"int\",");
            assert!(text.contains("id = \"int\""));
        }
        env.write_pipeline(&text);
        write_company(&env, 12);
        if numeric {
            // The same company with the keys P0000… as the numbers 1…12.
            let renumber = |path: &str| {
                let body = std::fs::read_to_string(env.path(path)).unwrap();
                let renumbered = (0..12).fold(body, |b, i| {
                    b.replace(&format!("P{i:04}"), &(i + 1).to_string())
                });
                env.write(path, renumbered);
            };
            renumber("exports/hr/persons.csv");
            renumber("exports/app/accounts.csv");
        }
        env.run("complete", &[], &[]).expect_code(0);
        let rows = stored_rows(
            &env,
            "assigned_scalars",
            &["resource_type", "owner_key", "attribute", "value"],
        );
        assert_eq!(rows.len(), 12 * 5, "{rows:?}");
        let mut sorted = rows.clone();
        sorted.sort();
        assert_eq!(rows, sorted, "numeric keys: {numeric}");
        stored.push(rows);
        let rows = stored_rows(
            &env,
            "assigned_resources",
            &["resource_type", "owner_key", "login", "email", "owner_id"],
        );
        assert_eq!(rows.len(), 12, "{rows:?}");
        let mut sorted = rows.clone();
        sorted.sort();
        assert_eq!(rows, sorted, "numeric keys: {numeric}");
        resources.push(rows);
    }
    assert_eq!(
        resources[1][..2].iter().map(|r| &r[1]).collect::<Vec<_>>(),
        ["1", "10"]
    );
    assert_eq!(
        resources[0][3],
        ["app_user", "P0003", "user0003", "u0003@x.com", "P0003"]
    );
    assert_eq!(
        resources[1][4],
        ["app_user", "2", "user0001", "u0001@x.com", "2"]
    );
    // The number keys sort as text: 1, 10, 11, 12, 2, …; the rows are the text keys' with the
    // keys renumbered.
    let owners: Vec<&str> = stored[1].iter().step_by(5).map(|r| r[1].as_str()).collect();
    assert_eq!(owners[..4], ["1", "10", "11", "12"]);
    let renumbered = |r: &Vec<String>| -> Vec<String> {
        let n = |k: &str| (k[1..].parse::<usize>().unwrap() + 1).to_string();
        let key = n(&r[1]);
        let value = if r[2] == "owner_id" {
            n(&r[3])
        } else {
            r[3].clone()
        };
        vec![r[0].clone(), key, r[2].clone(), value]
    };
    let mut expected: Vec<Vec<String>> = stored[0].iter().map(renumbered).collect();
    expected.sort();
    assert_eq!(stored[1], expected);
}

/// Link values granted by role, by rule and to every assigned owner, with a value granted
/// twice over (by role and by rule): each owner's desired values once, and none for an owner
/// the resource type does not assign.
#[test]
fn link_values_by_role_by_rule_and_unconditional_are_each_desired_once() {
    let env = Env::new();
    let old = "values = [ { role = \"sales\", target = \"G_SALES\" }, { role = \"it\", target = \"G_IT\" } ]";
    let text = app_pipeline("status = 'active'");
    assert!(text.contains(old));
    env.write_pipeline(&text.replace(
        old,
        "values = [ { role = \"sales\", target = \"G_SALES\" }, { role = \"it\", target = \"G_IT\" },\n\
         { rule = \"dept = 'IT'\", target = \"G_IT\" }, { rule = \"name = 'User0002'\", target = \"G_TWO\" },\n\
         { target = \"G_ALL\" } ]",
    ));
    write_company(&env, 4);
    let persons = std::fs::read_to_string(env.path("exports/hr/persons.csv")).unwrap();
    env.write(
        "exports/hr/persons.csv",
        persons.replace("P0003,User0003,IT,active", "P0003,User0003,IT,left"),
    );
    env.run("complete", &[], &[]).expect_code(0);
    assert_eq!(
        env.query("select owner_key, link, value from assigned_links order by 1, 2, 3"),
        [
            ["P0000", "member", "G_ALL"],
            ["P0000", "member", "G_SALES"],
            ["P0001", "member", "G_ALL"],
            ["P0001", "member", "G_IT"],
            ["P0002", "member", "G_ALL"],
            ["P0002", "member", "G_SALES"],
            ["P0002", "member", "G_TWO"],
        ]
    );
}

#[test]
fn correlation_keys_of_some_resource_types_keep_the_others() {
    let env = Env::new();
    let text = with_admin_type(&app_pipeline("status = 'active'"), "")
        + "\n[[job]]\nname = \"keys_user\"\n[[job.task]]\nname = \"keys\"\ntype = \"compute_correlation_keys\"\nresource_types = [\"app_user\"]\n";
    env.write_pipeline(&text);
    write_company(&env, 3);
    env.run("complete", &[], &[]).expect_code(0);
    let per_rt = "select resource_type, count(*) from correlation_keys group by resource_type order by resource_type";
    let before = env.query(per_rt);
    assert_eq!(before.len(), 2, "{before:?}");
    env.run("keys_user", &[], &[]).expect_code(0);
    assert_eq!(env.query(per_rt), before);
}

#[test]
fn the_run_summary_gives_the_orders_per_connector() {
    let env = Env::new();
    env.write_pipeline(&format!(
        "{}\n[notify]\nto = [\"ops@example.com\"]\nfrom = \"igaflow@example.com\"\n",
        app_pipeline("dept = 'Sales'")
    ));
    write_company(&env, 4);
    let out = env.run("complete", &[], &[]);
    out.expect_code(0);
    let run = run_id_of(&out);
    // The two IT accounts are disabled.
    let eml = std::fs::read_to_string(env.path(&format!("store/_outbox/{run}.eml"))).unwrap();
    assert!(eml.contains("per connector: app 2"), "{eml}");
}

#[test]
fn two_scalars_that_are_the_owner_key_itself_plan() {
    // Two resource types each with `emp = "id"`, the owner's key column: the owner key under
    // several names made DataFusion reject the role model's own plan (SanityCheckPlan).
    let env = Env::new();
    env.write_pipeline(KEY_SCALARS);
    env.write("exports/hr/persons.csv", "id\nP1\nP2\n");
    env.write("exports/app/accounts.csv", "k,emp\na1,P1\n");
    env.write("exports/app/accounts2.csv", "k,emp\nb1,P2\n");
    env.run("complete", &[], &[]).expect_code(0);
    assert_eq!(
        env.query(
            "select resource_type, count(*) from assigned_scalars \
             where attribute = 'emp' and value = owner_key \
             group by resource_type order by resource_type"
        ),
        [["r1", "2"], ["r2", "2"]]
    );
}

const KEY_SCALARS: &str = r#"name = "key_scalars"
[connector.hr]
exports = "../exports/hr"
[connector.app]
exports = "../exports/app"

[[entity]]
name = "person"
connector = "hr"
file = "persons.csv"
key = "id"
columns = { id = "string" }

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

[[resource_type]]
name = "r1"
owner = "person"
target = "acc"
correlation = [ { target = "emp", owner = "id" } ]
[resource_type.scalars]
emp = "id"

[[resource_type]]
name = "r2"
owner = "person"
target = "acc2"
correlation = [ { target = "emp", owner = "id" } ]
[resource_type.scalars]
emp = "id"

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
"#;

/// A complete job run again on the same exports leaves the derived tables as they are (the
/// commit compares them row by row with the stored rows, in stored order), and a changed
/// desired value that keeps every row count the same is still a change.
#[test]
fn a_rerun_leaves_the_role_model_unchanged_and_a_changed_value_is_a_change() {
    let env = Env::new();
    env.write_pipeline(&app_pipeline("status = 'active'"));
    write_company(&env, 50);
    env.run("complete", &[], &[]).expect_code(0);
    let status = |run: &str, task: &str| {
        env.scalar(&format!(
            "select status from task_runs where run_id = '{run}' and task = '{task}'"
        ))
    };
    let again = env.run("complete", &[], &[]);
    again.expect_code(0);
    let run = run_id_of(&again);
    for task in ["keys", "roles", "classify", "orders"] {
        assert_eq!(status(&run, task), "no_changes", "{task}: {}", again.stdout);
    }

    // One person's mail changes: as many rows in every table, one desired email differs.
    let persons = std::fs::read_to_string(env.path("exports/hr/persons.csv"))
        .unwrap()
        .replace("u0042@x.com", "changed@x.com");
    env.write("exports/hr/persons.csv", persons);
    let changed = env.run("complete", &[], &[]);
    changed.expect_code(0);
    assert_eq!(status(&run_id_of(&changed), "roles"), "succeeded");
    assert_eq!(
        env.scalar(
            "select value from assigned_scalars where owner_key = 'P0042' and attribute = 'email'"
        ),
        "changed@x.com"
    );
    assert_eq!(
        env.scalar("select count(*) from assigned_scalars where value = 'u0042@x.com'"),
        "0"
    );
}

/// Scalar changes to and from NULL, and a create_only attribute, through the hashed
/// comparison of desired and current values (`scalar_candidates` in sql/orders.sql): a value
/// set where the account has none, a value cleared, NULL on both sides (no order), a
/// create_only value that differs (no order), and an unchanged account (no order).
#[test]
fn scalar_values_set_cleared_and_create_only_give_exactly_their_orders() {
    let env = Env::new();
    env.write_pipeline(&app_pipeline("status = 'active'"));
    write_company(&env, 6);
    let persons = std::fs::read_to_string(env.path("exports/hr/persons.csv"))
        .unwrap()
        // desired NULL where the account has a value, and where it has none either
        .replace(",u0002@x.com", ",")
        .replace(",u0003@x.com", ",")
        // the desired login (create_only) differs from the account's
        .replace("User0004", "Renamed");
    env.write("exports/hr/persons.csv", persons);
    let accounts = std::fs::read_to_string(env.path("exports/app/accounts.csv"))
        .unwrap()
        // no current value where one is desired, and none where none is
        .replace(",u0001@x.com,", ",,")
        .replace(",u0003@x.com,", ",,");
    env.write("exports/app/accounts.csv", accounts);
    let run = env.run("complete", &[], &[]);
    run.expect_code(0);
    let mut modified: Vec<(String, serde_json::Value)> =
        emitted_orders(&env.store(), &run_id_of(&run))
            .into_iter()
            .filter(|o| o["change_type"] == "Modified")
            .map(|o| (o["resource_key"].to_string(), o["attributes"].clone()))
            .collect();
    modified.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        modified,
        [
            (
                r#""user0001""#.to_string(),
                serde_json::json!({"email": {"old": null, "new": "u0001@x.com"}})
            ),
            (
                r#""user0002""#.to_string(),
                serde_json::json!({"email": {"old": "u0002@x.com", "new": null}})
            ),
        ]
    );
}
