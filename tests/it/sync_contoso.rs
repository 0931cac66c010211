//! The demo company: day 1, day 2, a repeated day 2 and the incremental change set.

use crate::common::*;

fn contoso_env() -> Env {
    let env = Env::new();
    env.write_pipeline(&contoso_pipeline_text());
    env
}

fn counts(env: &Env, sql: &str) -> Vec<(String, String, String)> {
    env.query(sql)
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone(), r[2].clone()))
        .collect()
}

fn t(a: &str, b: &str, c: u32) -> (String, String, String) {
    (a.to_string(), b.to_string(), c.to_string())
}

#[test]
fn day1_then_day2_exact_changes_history_and_recently_modified() {
    let env = contoso_env();
    let day1 = env.run("complete", &[], &[("CONTOSO_DAY", "day1")]);
    day1.expect_code(0);
    assert!(day1.stdout.contains("succeeded"), "{}", day1.stdout);
    assert_eq!(env.scalar("select count(*) from person"), "200");
    assert_eq!(env.scalar("select count(*) from ad_account"), "206");
    assert_eq!(env.scalar("select count(*) from ad_group"), "32");
    assert_eq!(env.scalar("select count(*) from ad_member_of"), "1142");
    // Declared columns in declaration order, then computed ones.
    let (header, _) = query_with_header(&env.store(), "select * from person limit 1");
    assert_eq!(
        header,
        [
            "employee_id",
            "first_name",
            "last_name",
            "email",
            "department",
            "title",
            "manager_id",
            "status",
            "start_date",
            "end_date",
            "location",
            "display_name",
            "login"
        ]
    );
    assert_eq!(
        env.scalar("select display_name || '/' || login from person where employee_id = '000101'"),
        "Élise Laurent/élaurent"
    );

    let day2 = env.run("complete", &[], &[("CONTOSO_DAY", "day2")]);
    day2.expect_code(0);
    let run2 = run_id_of(&day2);
    assert!(
        day2.stdout
            .contains("person: 5 inserted, 8 updated, 2 deleted"),
        "{}",
        day2.stdout
    );
    assert!(
        day2.stdout
            .contains("ad_account: 0 inserted, 0 updated, 2 deleted")
            && day2
                .stdout
                .contains("ad_group: 0 inserted, 1 updated, 1 deleted")
            && day2
                .stdout
                .contains("ad_member_of: 3 inserted, 0 updated, 17 deleted"),
        "{}",
        day2.stdout
    );
    assert_eq!(env.scalar("select count(*) from person"), "203");
    assert_eq!(env.scalar("select count(*) from ad_member_of"), "1128");

    // History: the run's own rows per table and change.
    for (table, expected) in [
        (
            "person__history",
            vec![t("delete", "", 2), t("insert", "", 5), t("update", "", 8)],
        ),
        (
            "ad_group__history",
            vec![t("delete", "", 1), t("update", "", 1)],
        ),
        (
            "ad_member_of__history",
            vec![t("delete", "", 17), t("insert", "", 3)],
        ),
    ] {
        let got = counts(
            &env,
            &format!(
                "select _change, '', count(*) from {table} where _run_id = '{run2}' group by _change order by _change"
            ),
        );
        assert_eq!(got, expected, "{table}");
    }
    // A mover: the day-1 version is closed when the day-2 version opens.
    let mover = env.query(
        "select department, _change, _valid_to is null, _valid_from from person__history \
         where employee_id = '000136' order by _valid_from",
    );
    assert_eq!(mover.len(), 2, "{mover:?}");
    assert_eq!(mover[0][1], "insert");
    assert_eq!(mover[0][2], "false");
    assert_eq!(mover[1][1], "update");
    assert_eq!(mover[1][2], "true");
    assert_ne!(mover[0][0], mover[1][0], "the mover changed department");
    let closed_at = env.scalar(
        "select cast(_valid_to as varchar) from person__history where employee_id = '000136' and _change = 'insert'",
    );
    let opened_at = env.scalar(
        "select cast(_valid_from as varchar) from person__history where employee_id = '000136' and _change = 'update'",
    );
    assert_eq!(closed_at, opened_at);
    // A person removed from HR: a delete tombstone, and no open version left.
    assert_eq!(
        env.scalar("select count(*) from person__history where employee_id = '000143' and _valid_to is null"),
        "0"
    );
    assert_eq!(
        env.scalar(&format!(
            "select _change from person__history where employee_id = '000143' and _run_id = '{run2}'"
        )),
        "delete"
    );
    // The group rename is an update of the same key.
    assert_eq!(
        env.scalar(&format!(
            "select count(*) from ad_group__history where _run_id = '{run2}' and _change = 'update' and cn like 'SG_Sales%'"
        )),
        "1"
    );

    // recently_modified: every changed key of the run, with its change.
    let rm = counts(
        &env,
        &format!(
            "select entity, change, count(*) from recently_modified where run_id = '{run2}' \
             group by entity, change order by entity, change"
        ),
    );
    assert_eq!(
        rm,
        vec![
            t("ad_account", "delete", 2),
            t("ad_group", "delete", 1),
            t("ad_group", "update", 1),
            t(
                "ad_member_of",
                "delete",
                distinct_from_keys(&env, &run2, "delete")
            ),
            t(
                "ad_member_of",
                "insert",
                distinct_from_keys(&env, &run2, "insert")
            ),
            t("person", "delete", 2),
            t("person", "insert", 5),
            t("person", "update", 8),
        ]
    );
    assert_eq!(
        env.scalar(&format!(
            "select change from recently_modified where run_id = '{run2}' and entity = 'person' and key = '000301'"
        )),
        "insert"
    );

    // Day 2 again: nothing changes, and no entity table gets a new Delta version.
    let log_files = |t: &str| {
        std::fs::read_dir(env.path(&format!("store/{t}/_delta_log")))
            .unwrap()
            .count()
    };
    let versions = || -> Vec<usize> {
        [
            "person",
            "person__history",
            "ad_member_of",
            "recently_modified",
        ]
        .iter()
        .map(|t| log_files(t))
        .collect()
    };
    let before = versions();
    let again = env.run("complete", &[], &[("CONTOSO_DAY", "day2")]);
    again.expect_code(0);
    assert!(
        again.stdout.contains("job complete · no_changes"),
        "{}",
        again.stdout
    );
    let after = versions();
    assert_eq!(before, after, "a run without changes wrote table versions");
    let run3 = run_id_of(&again);
    assert_eq!(
        env.scalar(&format!(
            "select count(*) from recently_modified where run_id = '{run3}'"
        )),
        "0"
    );
    assert_eq!(
        env.scalar(&format!("select status from runs where run_id = '{run3}'")),
        "no_changes"
    );
}

/// Link changes are recorded in recently_modified once per `from` key (the account) and change.
fn distinct_from_keys(env: &Env, run: &str, change: &str) -> u32 {
    env.scalar(&format!(
        "select count(distinct account_dn) from ad_member_of__history where _run_id = '{run}' and _change = '{change}'"
    ))
    .parse()
    .unwrap()
}

#[test]
fn incremental_change_set_applies_commands_and_warns() {
    let env = contoso_env();
    env.run("complete", &[], &[("CONTOSO_DAY", "day1")])
        .expect_code(0);
    env.run("complete", &[], &[("CONTOSO_DAY", "day2")])
        .expect_code(0);
    let before_ad = snapshot(&env.store(), &["ad_account", "ad_member_of"], false);
    let inc = env.run("incremental", &[], &[("CONTOSO_DAY", "incremental")]);
    inc.expect_code(0);
    let run = run_id_of(&inc);
    assert!(
        inc.stdout.contains("job incremental · warning"),
        "{}",
        inc.stdout
    );
    assert!(
        inc.stdout
            .contains("person: 3 inserted, 2 updated, 1 deleted"),
        "{}",
        inc.stdout
    );
    let (status, message) = {
        let r = env.query(&format!(
            "select status, message from task_runs where run_id = '{run}' and task = 'sync_hr'"
        ));
        (r[0][0].clone(), r[0][1].clone())
    };
    assert_eq!(status, "warning");
    assert!(message.contains("2 warnings"), "{message}");
    assert!(
        message.contains("`000308`: update of a missing key inserted it"),
        "{message}"
    );
    assert!(
        message.contains("`000999`: delete of a missing key ignored"),
        "{message}"
    );

    assert_eq!(env.scalar("select count(*) from person"), "205");
    assert_eq!(
        env.scalar("select title from person where employee_id = '000135'"),
        "Recruiter"
    );
    assert_eq!(
        env.scalar(
            "select count(*) from person where employee_id in ('000306', '000307', '000308')"
        ),
        "3"
    );
    assert_eq!(
        env.scalar("select count(*) from person where employee_id in ('000174', '000999')"),
        "0"
    );
    // Untouched rows keep their values: 205 = 203 + 3 inserted - 1 deleted.
    assert_eq!(
        env.scalar("select first_name from person where employee_id = '000307'"),
        "Grégoire"
    );
    // Incremental HR never touches the AD connector.
    assert_eq!(
        snapshot(&env.store(), &["ad_account", "ad_member_of"], false),
        before_ad
    );
    let rm = counts(
        &env,
        &format!(
            "select change, key, entity from recently_modified where run_id = '{run}' order by key"
        ),
    );
    let keys: Vec<&str> = rm.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(
        keys,
        ["000135", "000156", "000174", "000306", "000307", "000308"]
    );
}

/// A complete synchronization finds the changed memberships by a merge of the sorted pairs
/// with the stored ones, and places their history rows among the stored history rows
/// (sorted by pair, then validity): a pair removed one day and back the next has its three
/// rows in order, no pair removed keeps an open row, and the tables stay sorted.
#[test]
fn memberships_removed_then_restored_keep_their_history_in_order() {
    let env = contoso_env();
    env.run("complete", &[], &[("CONTOSO_DAY", "day1")])
        .expect_code(0);
    let day2 = env.run("complete", &[], &[("CONTOSO_DAY", "day2")]);
    day2.expect_code(0);
    let run2 = run_id_of(&day2);
    // Day 1's exports again: day 2's 17 removed pairs come back, its 3 new ones go.
    let day3 = env.run("complete", &[], &[("CONTOSO_DAY", "day1")]);
    day3.expect_code(0);
    let run3 = run_id_of(&day3);
    assert!(
        day3.stdout
            .contains("ad_member_of: 17 inserted, 0 updated, 3 deleted"),
        "{}",
        day3.stdout
    );
    assert_eq!(env.scalar("select count(*) from ad_member_of"), "1142");
    // A pair removed on day 2 (one of those whose account still exists) and back on day 3.
    let pair = env.query(&format!(
        "select h.account_dn, h.group_dn from ad_member_of__history h \
         join ad_account a on a.dn = h.account_dn \
         where h._run_id = '{run2}' and h._change = 'delete' order by 1, 2 limit 1"
    ));
    assert_eq!(
        pair.len(),
        1,
        "day 2 removed a membership of a kept account"
    );
    let (account, group) = (&pair[0][0], &pair[0][1]);
    let rows = env.query(&format!(
        "select _change, _run_id = '{run2}', _run_id = '{run3}', _valid_to is null, \
                _valid_from = _valid_to \
         from ad_member_of__history \
         where account_dn = '{account}' and group_dn = '{group}' \
         order by _valid_from, _valid_to nulls last"
    ));
    let expected = [
        ["insert", "false", "false", "false", "false"], // day 1, closed on day 2
        ["delete", "true", "false", "false", "true"],   // day 2's tombstone
        ["insert", "false", "true", "true", ""],        // day 3, open (NULL end)
    ];
    assert_eq!(
        rows,
        expected.map(|r| r.map(String::from).to_vec()),
        "{account} {group}"
    );
    // Day 2's pairs removed on day 3: closed, none left open.
    assert_eq!(
        env.scalar(
            "select count(*) from ad_member_of__history h where h._valid_to is null \
             and not exists (select 1 from ad_member_of m \
                             where m.account_dn = h.account_dn and m.group_dn = h.group_dn)"
        ),
        "0"
    );
    assert_eq!(
        env.scalar(&format!(
            "select count(*) from ad_member_of__history where _run_id = '{run3}' and _change = 'delete'"
        )),
        "3"
    );
    // Every stored pair has exactly one open history row.
    assert_eq!(
        env.scalar("select count(*) from ad_member_of__history where _valid_to is null"),
        "1142"
    );
    // Both tables are stored sorted: the next run's merge and placement rely on it.
    let state = stored_rows(&env, "ad_member_of", &["account_dn", "group_dn"]);
    assert_eq!(state.len(), 1142);
    assert!(state.windows(2).all(|w| w[0] < w[1]), "ad_member_of sorted");
    let history = stored_rows(
        &env,
        "ad_member_of__history",
        &["account_dn", "group_dn", "_valid_from"],
    );
    assert!(history.len() > 1142 + 17 + 3);
    assert!(
        history.windows(2).all(|w| w[0] < w[1]),
        "ad_member_of__history sorted by pair and opening"
    );
}
