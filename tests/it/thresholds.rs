//! Synchronization thresholds: a truncated export blocks the whole connector.

use crate::common::*;

const TABLES: [&str; 3] = ["person", "person__history", "recently_modified"];

#[test]
fn truncated_export_blocks_then_force_commits() {
    let env = Env::new();
    env.write_pipeline(&hr_pipeline(""));
    env.write("exports/hr/persons.csv", persons_csv(1..=1000));
    env.run("complete", &[], &[]).expect_code(0);
    assert_eq!(env.scalar("select count(*) from person"), "1000");

    // 40% of the rows are gone from the export (and a few others changed).
    let mut truncated = persons_csv(1..=600);
    truncated = truncated.replace("Person 7,", "Person Seven,");
    env.write("exports/hr/persons.csv", &truncated);
    let before = snapshot(&env.store(), &TABLES, false);
    let blocked = env.run("complete", &[], &[]);
    blocked.expect_code(3);
    assert!(blocked.stdout.contains("blocked"), "{}", blocked.stdout);
    assert!(
        blocked.stderr.contains("400")
            && blocked.stderr.contains("40")
            && blocked.stderr.contains("--force"),
        "the message gives counts, percentage and the override: {}",
        blocked.stderr
    );
    assert_eq!(
        snapshot(&env.store(), &TABLES, false),
        before,
        "a blocked run committed something"
    );
    assert_eq!(env.scalar("select count(*) from person"), "1000");
    assert_eq!(
        env.scalar("select status from runs order by started_at desc limit 1"),
        "blocked"
    );
    assert_eq!(
        env.query(
            "select status, rows_read, changes from task_runs where task = 'sync_hr' order by started_at desc limit 1"
        ),
        [["blocked", "600", "0"]],
        "a blocked synchronization reports what it read"
    );

    // While blocked, incremental runs skip the connector.
    env.write(
        "exports/hr/persons.csv",
        "command,employee_id,name,birth_date,level,note\ninsert,E09999,Late,1990-01-01,1,\n",
    );
    let skipped = env.run("incremental", &[], &[]);
    skipped.expect_code(0);
    assert!(
        skipped.stdout.contains("skipped") && skipped.stdout.contains("blocked"),
        "{}",
        skipped.stdout
    );
    assert_eq!(
        env.scalar("select count(*) from person where employee_id = 'E09999'"),
        "0"
    );

    env.write("exports/hr/persons.csv", &truncated);
    let forced = env.run("complete", &["--force"], &[]);
    forced.expect_code(0);
    assert!(
        forced
            .stdout
            .contains("person: 0 inserted, 1 updated, 400 deleted"),
        "{}",
        forced.stdout
    );
    assert_eq!(env.scalar("select count(*) from person"), "600");
    assert_eq!(
        env.scalar("select name from person where employee_id = 'E00007'"),
        "Person Seven"
    );

    // The forced complete run cleared the block: incremental runs apply again.
    env.write(
        "exports/hr/persons.csv",
        "command,employee_id,name,birth_date,level,note\ninsert,E09999,Late,1990-01-01,1,\n",
    );
    env.run("incremental", &[], &[]).expect_code(0);
    assert_eq!(
        env.scalar("select count(*) from person where employee_id = 'E09999'"),
        "1"
    );
}

#[test]
fn empty_file_blocks_even_below_min_rows() {
    let env = Env::new();
    env.write_pipeline(&hr_pipeline(""));
    env.write("exports/hr/persons.csv", persons_csv(1..=20));
    env.run("complete", &[], &[]).expect_code(0);
    // A header and no rows, or no bytes at all (a truncated export): an empty file.
    for body in [HR_HEADER, ""] {
        env.write("exports/hr/persons.csv", body);
        let before = snapshot(&env.store(), &TABLES, false);
        let out = env.run("complete", &[], &[]);
        out.expect_code(3);
        assert!(out.stderr.contains("empty"), "{}", out.stderr);
        assert_eq!(snapshot(&env.store(), &TABLES, false), before);
    }
    // Below min_rows, a large share of deletions is accepted.
    env.write("exports/hr/persons.csv", persons_csv(1..=5));
    env.run("complete", &[], &[]).expect_code(0);
    assert_eq!(env.scalar("select count(*) from person"), "5");
}

#[test]
fn count_and_insert_thresholds_and_task_force() {
    let env = Env::new();
    env.write_pipeline(&hr_pipeline(
        "thresholds = { min_rows = 10, max_deleted = 5, max_inserted_percent = 50 }",
    ));
    env.write("exports/hr/persons.csv", persons_csv(1..=100));
    env.run("complete", &[], &[]).expect_code(0);
    // 6 deletions: 6% is under the default 30%, but over max_deleted = 5.
    env.write("exports/hr/persons.csv", persons_csv(7..=100));
    let out = env.run("complete", &[], &[]);
    out.expect_code(3);
    // Counts, percentage and the override (SPEC section 4), for a count limit too.
    assert!(
        out.stderr.contains("6 of 100 rows (6.0%)")
            && out.stderr.contains("max_deleted = 5")
            && out.stderr.contains("--force"),
        "{}",
        out.stderr
    );
    // 60 insertions on 100 rows: over max_inserted_percent.
    env.write("exports/hr/persons.csv", persons_csv(1..=160));
    env.run("complete", &[], &[]).expect_code(3);
    assert_eq!(env.scalar("select count(*) from person"), "100");
    // force = true on the task lets it through.
    let text =
        hr_pipeline("thresholds = { min_rows = 10, max_deleted = 5, max_inserted_percent = 50 }")
            .replace("mode = \"complete\"", "mode = \"complete\"\nforce = true");
    env.write_pipeline(&text);
    env.run("complete", &[], &[]).expect_code(0);
    assert_eq!(env.scalar("select count(*) from person"), "160");
}

#[test]
fn a_forced_incremental_run_clears_the_block_it_hit() {
    let env = Env::new();
    env.write_pipeline(&hr_pipeline(
        "thresholds = { min_rows = 3, max_deleted_percent = 30 }",
    ));
    env.write("exports/hr/persons.csv", persons_csv(1..=4));
    env.run("complete", &[], &[]).expect_code(0);
    let change = |body: &str| format!("command,employee_id,name,birth_date,level,note\n{body}");
    env.write(
        "exports/hr/persons.csv",
        change("delete,E00001,,,,\ndelete,E00002,,,,\n"),
    );
    env.run("incremental", &[], &[]).expect_code(3);
    env.run("incremental", &["--force"], &[]).expect_code(0);
    assert_eq!(env.scalar("select count(*) from person"), "2");
    // The next change set applies: the forced run cleared the block.
    env.write(
        "exports/hr/persons.csv",
        change("insert,E00005,Five,1980-01-05,5,\n"),
    );
    let out = env.run("incremental", &[], &[]);
    out.expect_code(0);
    assert!(!out.stdout.contains("skipped"), "{}", out.stdout);
    assert_eq!(env.scalar("select count(*) from person"), "3");
}
