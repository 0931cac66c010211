//! `update_identities`: one case per row of the seed's condition tables.

use crate::common::*;

fn pipeline(rt_update: bool) -> String {
    pipeline_with(rt_update, false)
}

fn pipeline_with(rt_update: bool, fast_track: bool) -> String {
    format!(
        r#"name = "identities"

[connector.hr]
exports = "../exports/hr"
[connector.app]
exports = "../exports/app"
update = true

[[entity]]
name = "person"
connector = "hr"
file = "persons.csv"
key = "id"
columns = {{ id = "string", status = "string", anon = "int", first_name = "string" }}

[[entity]]
name = "account"
connector = "app"
file = "accounts.csv"
key = "login"
columns = {{ login = "string", owner_id = "string", uac = "int", deactivated_by = "string", first = "string" }}

[lifecycle]
owner = "person"
state = "CASE status WHEN 'active' THEN 1 WHEN 'deleted' THEN 2 WHEN 'suspended' THEN 3 END"
anonymization_status = "anon"
anonymize = {{ first_name = "'ANONYMIZED'" }}
fast_track = {fast_track}

[[resource_type]]
name = "app_user"
owner = "person"
target = "account"
correlation = [ {{ target = "owner_id", owner = "id" }} ]
scalars = {{ first = "first_name", login = "lower(id)" }}
create_only = ["login"]
lifecycle = {{ update = {rt_update}, active = "uac <> 514", deactivated_by = "deactivated_by" }}

[[job]]
name = "j"
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
name = "identities"
type = "update_identities"
"#
    )
}

/// Each row: person (status, anon, first name) and its account (uac, deactivated_by, first).
const PERSONS: &str = "id,status,anon,first_name
P01,active,0,Ann
P02,active,0,Bobby
P03,suspended,0,Cid
P04,suspended,0,Dee
P05,deleted,0,Eve
P06,deleted,2,Frank
P07,deleted,2,Gus
P08,active,0,Hal
P09,active,0,Ivy
P10,active,0,Jo
P11,active,0,
";

const ACCOUNTS: &str = "login,owner_id,uac,deactivated_by,first
a01,P01,512,,Ann
a02,P02,512,,Bob
a03,P03,512,,Cid
a04,P04,514,,Dee
a05,P05,512,,Eve
a06,P06,512,,Frank
a07,P07,514,,ANONYMIZED
a08,P08,514,,Hal
a09,P09,514,admin,Ivy
a11,P11,512,,Xena
";

fn env(rt_update: bool) -> Env {
    let env = Env::new();
    env.write_pipeline(&pipeline(rt_update));
    env.write("exports/hr/persons.csv", PERSONS);
    env.write("exports/app/accounts.csv", ACCOUNTS);
    env
}

#[test]
fn condition_sets_work_items_and_events() {
    let env = env(true);
    let out = env.run("j", &[], &[]);
    out.expect_code(0);

    // Update work items: active owners (a01, a02, a08, a09, a11), suspended with an active
    // account (a03), deleted to anonymize (a06, a07). Not: a04 (suspended and inactive:
    // ignored), a05 (deleted, not to anonymize, no update_when_owner_disabled), P10 (no account).
    assert_eq!(
        env.query("select account_key, serialized_value, old_serialized_value, has_changed, to_delete from identity_updates order by account_key"),
        [
            ["a01", "Ann", "Ann", "false", "false"],
            ["a02", "Bobby", "Bob", "true", "false"],
            ["a03", "Cid", "Cid", "false", "false"],
            ["a06", "ANONYMIZED", "Frank", "true", "false"],
            ["a07", "ANONYMIZED", "ANONYMIZED", "false", "false"],
            ["a08", "Hal", "Hal", "false", "false"],
            ["a09", "Ivy", "Ivy", "false", "false"],
            ["a11", "", "Xena", "true", "true"],
        ]
    );
    // create_only scalars are never updated.
    assert_eq!(
        env.scalar("select count(*) from identity_updates where attribute = 'login'"),
        "0"
    );
    // Deactivation, in the base filter only: suspended (a03) or deleted and to anonymize (a06)
    // owners with an active account — not a05, whose deleted owner is neither to anonymize nor
    // under update_when_owner_disabled; reactivation: active owner, inactive account nobody
    // deactivated by hand (a08, not a09).
    assert_eq!(
        env.query("select account_key, owner_key, event from identity_events order by account_key"),
        [
            ["a03", "P03", "UserAccountDeactivationRequested"],
            ["a06", "P06", "UserAccountDeactivationRequested"],
            ["a08", "P08", "UserAccountActivated"],
        ]
    );
    // Anonymization: values changed → 3 (AnonymizationStarted); none changed → 4, then the
    // history is scrubbed in the same run → 5.
    assert_eq!(
        env.query("select account_key, active, has_active_changed, anonymization_status from identity_states order by account_key"),
        [
            ["a03", "false", "true", ""],
            ["a06", "false", "true", "3"],
            ["a07", "false", "false", "5"],
            ["a08", "true", "true", ""],
        ]
    );

    // Twice in a row: nothing changes the second time.
    let again = env.run("j", &[], &[]);
    again.expect_code(0);
    let run = run_id_of(&again);
    assert_eq!(
        env.scalar(&format!(
            "select status from task_runs where run_id = '{run}' and task = 'identities'"
        )),
        "no_changes"
    );
    assert_eq!(env.scalar("select count(*) from identity_events"), "3");
}

#[test]
fn update_when_owner_disabled_brings_a_deleted_owners_accounts_into_the_base_filter() {
    let env = Env::new();
    env.write_pipeline(&pipeline(true).replace(
        "lifecycle = { update = true,",
        "lifecycle = { update = true, update_when_owner_disabled = true,",
    ));
    env.write("exports/hr/persons.csv", PERSONS);
    env.write("exports/app/accounts.csv", ACCOUNTS);
    env.run("j", &[], &[]).expect_code(0);
    // a05 (deleted, not to anonymize) is now processed: updated and deactivated.
    assert_eq!(
        env.query("select event from identity_events where account_key = 'a05'"),
        [["UserAccountDeactivationRequested"]]
    );
    assert_eq!(
        env.scalar("select count(*) from identity_updates where account_key = 'a05'"),
        "1"
    );
}

#[test]
fn without_the_update_feature_nothing_is_done() {
    let env = env(false);
    env.run("j", &[], &[]).expect_code(0);
    assert_eq!(env.scalar("select count(*) from identity_updates"), "0");
    // The task's tables exist (queryable), without events.
    assert_eq!(env.scalar("select count(*) from identity_events"), "0");
}

#[test]
fn fast_track_emits_the_changed_accounts_orders_in_the_same_run() {
    // Without fast track the job (no orders task) emits no order.
    let slow = env(true);
    slow.run("j", &[], &[]).expect_code(0);
    assert!(
        slow.query(
            "select table_name from information_schema.tables where table_name = 'provisioning_orders'"
        )
        .is_empty()
    );

    let env = Env::new();
    env.write_pipeline(&pipeline_with(true, true));
    env.write("exports/hr/persons.csv", PERSONS);
    env.write("exports/app/accounts.csv", ACCOUNTS);
    let out = env.run("j", &[], &[]);
    out.expect_code(0);
    assert!(out.stdout.contains("fast track"), "{}", out.stdout);
    // The changed values: a02 Bob → Bobby, a06 anonymized (status 3), a11 first name removed.
    assert_eq!(
        env.query("select account_key, change_type, attributes from provisioning_orders where change_type = 'Modified' order by account_key"),
        [
            ["a02", "Modified", r#"{"first":{"old":"Bob","new":"Bobby"}}"#],
            ["a06", "Modified", r#"{"first":{"old":"Frank","new":"ANONYMIZED"}}"#],
            ["a11", "Modified", r#"{"first":{"old":"Xena","new":null}}"#],
        ]
    );
    let run = run_id_of(&out);
    assert!(env.path(&format!("store/_orders/{run}/app.json")).exists());
}

#[test]
fn deactivated_accounts_get_the_disable_values_in_a_modified_order() {
    let env = Env::new();
    env.write_pipeline(&pipeline_with(true, true).replace(
        "create_only = [\"login\"]",
        "create_only = [\"login\"]\ndisable = { uac = \"514\" }",
    ));
    env.write("exports/hr/persons.csv", PERSONS);
    env.write("exports/app/accounts.csv", ACCOUNTS);
    let out = env.run("j", &[], &[]);
    out.expect_code(0);
    // a03 (suspended owner) and a06 (deleted owner, to anonymize) were deactivated: their
    // orders carry the disable values, a06's beside its anonymized values.
    let modified = "select account_key, attributes from provisioning_orders \
                    where change_type = 'Modified' order by account_key";
    assert_eq!(
        env.query(modified),
        [
            ["a02", r#"{"first":{"old":"Bob","new":"Bobby"}}"#],
            ["a03", r#"{"uac":{"old":512,"new":514}}"#],
            [
                "a06",
                r#"{"first":{"old":"Frank","new":"ANONYMIZED"},"uac":{"old":512,"new":514}}"#
            ],
            ["a11", r#"{"first":{"old":"Xena","new":null}}"#],
        ]
    );
    // Once the target has applied it, a03 stays deactivated: no order.
    env.write(
        "exports/app/accounts.csv",
        ACCOUNTS.replace("a03,P03,512,", "a03,P03,514,"),
    );
    let out = env.run("j", &[], &[]);
    out.expect_code(0);
    let run = run_id_of(&out);
    assert_eq!(
        env.scalar(&format!(
            "select count(*) from provisioning_orders where last_run_id = '{run}' and account_key = 'a03'"
        )),
        "0"
    );
    assert_eq!(
        env.scalar("select cast(active as varchar) from identity_states where account_key = 'a03'"),
        "false"
    );
}

#[test]
fn accounts_the_lifecycle_keeps_inactive_are_not_re_enabled_by_the_role_model() {
    // The role model desires every account enabled (uac 512); disabling is uac 514.
    let env = Env::new();
    env.write_pipeline(
        &pipeline(true)
            .replace(
                "create_only = [\"login\"]",
                "create_only = [\"login\"]\ndisable = { uac = \"514\" }",
            )
            .replace("login = \"lower(id)\" }", "login = \"lower(id)\", uac = \"512\" }")
            .replace(
                "name = \"identities\"\ntype = \"update_identities\"",
                "name = \"identities\"\ntype = \"update_identities\"\n[[job.task]]\nname = \"orders\"\ntype = \"generate_provisioning_orders\"",
            ),
    );
    env.write("exports/hr/persons.csv", PERSONS);
    env.write("exports/app/accounts.csv", ACCOUNTS);
    env.run("j", &[], &[]).expect_code(0);
    let uac: Vec<Vec<String>> = env.query(
        "select account_key from provisioning_orders \
         where change_type = 'Modified' and attributes like '%\"uac\"%' order by account_key",
    );
    let touched: Vec<&str> = uac.iter().map(|r| r[0].as_str()).collect();
    // a03, a06: deactivated (514); a08: reactivated by the engine, so desired 512 applies.
    // Not a04 (suspended owner, inactive) nor a09 (deactivated by hand): they stay at 514.
    assert_eq!(touched, ["a03", "a06", "a08"], "{uac:?}");
    assert_eq!(
        env.query(
            "select account_key, attributes from provisioning_orders \
             where account_key in ('a03', 'a08') order by account_key"
        ),
        [
            ["a03", r#"{"uac":{"old":512,"new":514}}"#],
            ["a08", r#"{"uac":{"old":514,"new":512}}"#],
        ]
    );
}

/// `pipeline_with` plus an orders task, a `disable` value and the given extra lines in the
/// resource type.
fn with_orders(fast_track: bool, extra: &str) -> String {
    pipeline_with(true, fast_track)
        .replace(
            "create_only = [\"login\"]",
            &format!("create_only = [\"login\"]\ndisable = {{ uac = \"514\" }}\n{extra}"),
        )
        .replace(
            "name = \"identities\"\ntype = \"update_identities\"",
            "name = \"identities\"\ntype = \"update_identities\"\n[[job.task]]\nname = \"orders\"\ntype = \"generate_provisioning_orders\"",
        )
}

#[test]
fn deactivations_count_as_deletions_for_the_provisioning_thresholds() {
    // 10 linked accounts; update_identities deactivates a03 and a06: 20% disabled, above 10%.
    for fast_track in [false, true] {
        let env = Env::new();
        env.write_pipeline(&with_orders(
            fast_track,
            "thresholds = { max_deleted_percent = 10, min_rows = 1 }",
        ));
        env.write("exports/hr/persons.csv", PERSONS);
        env.write("exports/app/accounts.csv", ACCOUNTS);
        let out = env.run("j", &[], &[]);
        out.expect_code(3);
        assert_eq!(
            env.query(
                "select account_key, state from provisioning_orders \
                 where attributes like '%\"uac\":{\"old\":512,\"new\":514}%' order by account_key"
            ),
            [["a03", "blocked"], ["a06", "blocked"]],
            "fast_track = {fast_track}"
        );
        let run = run_id_of(&out);
        assert!(
            !env.path(&format!("store/_orders/{run}/app.json")).exists(),
            "fast_track = {fast_track}: blocked orders were written to the order file"
        );
        // Released by --force.
        env.run("j", &["--force"], &[]).expect_code(0);
        assert_eq!(
            env.scalar("select count(*) from provisioning_orders where state = 'blocked'"),
            "0"
        );
    }
}

#[test]
fn a_deleted_owners_account_under_update_when_owner_disabled_gets_its_updated_values() {
    // Only active persons are assigned: P05 (deleted, not to anonymize) loses the resource
    // type and its account is disabled; with update_when_owner_disabled its first name
    // (Eve → Eva) is updated too, in the same order.
    let env = Env::new();
    env.write_pipeline(
        &with_orders(false, "rule = \"status = 'active'\"\non_lost = \"disable\"").replace(
            "lifecycle = { update = true,",
            "lifecycle = { update = true, update_when_owner_disabled = true,",
        ),
    );
    env.write(
        "exports/hr/persons.csv",
        PERSONS.replace("P05,deleted,0,Eve", "P05,deleted,0,Eva"),
    );
    env.write("exports/app/accounts.csv", ACCOUNTS);
    env.run("j", &[], &[]).expect_code(0);
    assert_eq!(
        env.query(
            "select change_type, attributes from provisioning_orders where account_key = 'a05'"
        ),
        [[
            "Modified",
            r#"{"first":{"old":"Eve","new":"Eva"},"uac":{"old":512,"new":514}}"#
        ]]
    );
}
