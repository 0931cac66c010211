//! Initial loads and incremental change files on a small HR pipeline.

use crate::common::*;

#[test]
fn initial_load_into_empty_table_then_refused_when_not_empty() {
    let env = Env::new();
    env.write_pipeline(&hr_pipeline(""));
    env.write("exports/hr/persons.csv", persons_csv(1..=50));
    let first = env.run("initial", &[], &[]);
    first.expect_code(0);
    assert_eq!(env.scalar("select count(*) from person"), "50");
    assert_eq!(
        env.scalar("select count(*) from person__history where _change = 'insert'"),
        "50"
    );
    assert_eq!(env.scalar("select count(*) from recently_modified"), "50");

    let before = snapshot(&env.store(), &["person", "person__history"], false);
    let second = env.run("initial", &[], &[]);
    second.expect_code(2);
    assert!(
        second.stderr.contains("person") && second.stderr.contains("already has 50 rows"),
        "{}",
        second.stderr
    );
    assert_eq!(
        snapshot(&env.store(), &["person", "person__history"], false),
        before
    );
    // A complete run on the initial load works as usual afterwards.
    env.write("exports/hr/persons.csv", persons_csv(1..=52));
    let complete = env.run("complete", &[], &[]);
    complete.expect_code(0);
    assert!(
        complete
            .stdout
            .contains("person: 2 inserted, 0 updated, 0 deleted"),
        "{}",
        complete.stdout
    );
}

#[test]
fn incremental_commands_are_case_insensitive_and_missing_keys_warn() {
    let env = Env::new();
    env.write_pipeline(&hr_pipeline(""));
    env.write("exports/hr/persons.csv", persons_csv(1..=10));
    env.run("complete", &[], &[]).expect_code(0);
    env.write(
        "exports/hr/persons.csv",
        "note,command,employee_id,name,birth_date,level\n\
         ,INSERT,E00011,New Person,1990-05-05,1\n\
         changed,Update,E00002,Person 2,1980-01-03,4\n\
         ,delete,E00003,,,\n\
         ,update,E00077,Upserted,2000-02-29,2\n\
         ,delete,E00099,,,\n",
    );
    let out = env.run("incremental", &[], &[]);
    out.expect_code(0);
    assert!(out.stdout.contains("warning"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("person: 2 inserted, 1 updated, 1 deleted"),
        "{}",
        out.stdout
    );
    let rows = env.query("select employee_id, name, cast(birth_date as varchar), level, note from person order by employee_id");
    let ids: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        ids,
        [
            "E00001", "E00002", "E00004", "E00005", "E00006", "E00007", "E00008", "E00009",
            "E00010", "E00011", "E00077"
        ]
    );
    assert_eq!(
        rows[1],
        ["E00002", "Person 2", "1980-01-03", "4", "changed"]
    );
    assert_eq!(rows[10], ["E00077", "Upserted", "2000-02-29", "2", ""]);
    let task = env.query("select status, message from task_runs order by started_at desc limit 1");
    assert_eq!(task[0][0], "warning");
    assert!(task[0][1].contains("2 warnings"), "{}", task[0][1]);
    // History of the incremental run: the delete closes E00003.
    assert_eq!(
        env.scalar("select count(*) from person__history where employee_id = 'E00003' and _valid_to is null"),
        "0"
    );
}

#[test]
fn incremental_file_with_unknown_command_is_bad_input() {
    let env = Env::new();
    env.write_pipeline(&hr_pipeline(""));
    env.write("exports/hr/persons.csv", persons_csv(1..=3));
    env.run("complete", &[], &[]).expect_code(0);
    env.write(
        "exports/hr/persons.csv",
        "command,employee_id,name,birth_date,level,note\nupsert,E00001,X,1980-01-01,1,\n",
    );
    let out = env.run("incremental", &[], &[]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("persons.csv")
            && out.stderr.contains("line 2")
            && out.stderr.contains("upsert"),
        "{}",
        out.stderr
    );
}

#[test]
fn file_uri_store_and_dry_run() {
    let env = Env::new();
    env.write_pipeline(&hr_pipeline(""));
    env.write("exports/hr/persons.csv", persons_csv(1..=10));
    let uri = format!("file://{}", env.store());
    let pipeline = env.pipeline();
    igaflow(
        &["run", &pipeline, "--job", "complete", "--store", &uri],
        &[],
    )
    .expect_code(0);
    assert_eq!(env.scalar("select count(*) from person"), "10");
    assert!(env.path("store/person/_delta_log").is_dir());

    env.write("exports/hr/persons.csv", persons_csv(3..=12));
    let before = snapshot(
        &env.store(),
        &["person", "person__history", "recently_modified", "runs"],
        false,
    );
    let dry = igaflow(
        &[
            "run",
            &pipeline,
            "--job",
            "complete",
            "--store",
            &uri,
            "--dry-run",
        ],
        &[],
    );
    dry.expect_code(0);
    assert!(
        dry.stdout
            .contains("person: 2 inserted, 0 updated, 2 deleted"),
        "{}",
        dry.stdout
    );
    assert!(dry.stdout.contains("dry run"), "{}", dry.stdout);
    assert_eq!(
        snapshot(
            &env.store(),
            &["person", "person__history", "recently_modified", "runs"],
            false
        ),
        before
    );
}

#[test]
fn computed_columns_follow_the_as_of_date() {
    let env = Env::new();
    let text = hr_pipeline(
        "computed = { adult = \"birth_date <= current_date - INTERVAL '18' YEAR\" }",
    ) + "\n[[job]]\nname = \"expressions\"\n[[job.task]]\nname = \"expr\"\ntype = \"update_entity_property_expressions\"\n";
    env.write_pipeline(&text);
    env.write(
        "exports/hr/persons.csv",
        format!("{HR_HEADER}E1,Kid,2010-06-15,1,\nE2,Grown,1980-01-01,1,\n"),
    );
    env.run("complete", &["--as-of", "2028-06-14"], &[])
        .expect_code(0);
    assert_eq!(
        env.query("select employee_id, adult from person order by employee_id"),
        [["E1", "false"], ["E2", "true"]]
    );
    // The same day: nothing to recompute.
    let same = env.run("expressions", &["--as-of", "2028-06-14"], &[]);
    same.expect_code(0);
    assert!(same.stdout.contains("no_changes"), "{}", same.stdout);
    // A day later E1 turns 18 (dates are inclusive).
    let next = env.run("expressions", &["--as-of", "2028-06-15"], &[]);
    next.expect_code(0);
    assert!(next.stdout.contains("person: 1 row(s)"), "{}", next.stdout);
    assert_eq!(
        env.scalar("select adult from person where employee_id = 'E1'"),
        "true"
    );
    // A change like any other: the history closes the old version and opens an update, and
    // the key is recently modified (for dirty tasks); E2 did not change.
    let run = run_id_of(&next);
    assert_eq!(
        env.query(
            "select employee_id, adult, _change, _valid_to is null, _run_id = '' from person__history order by employee_id, _valid_from"
        ),
        [
            ["E1", "false", "insert", "false", "false"],
            ["E1", "true", "update", "true", "false"],
            ["E2", "true", "insert", "true", "false"],
        ]
    );
    assert_eq!(
        env.scalar("select count(*) from person__history where employee_id = 'E1' and _change = 'update' and _run_id = (select run_id from runs order by started_at desc limit 1)"),
        "1"
    );
    assert_eq!(
        env.query(&format!(
            "select entity, key, change from recently_modified where run_id = '{run}'"
        )),
        [["person", "E1", "update"]]
    );
    // Still computed for the next day: nothing changes, nothing is recorded.
    let again = env.run("expressions", &["--as-of", "2028-06-16"], &[]);
    again.expect_code(0);
    assert!(again.stdout.contains("no_changes"), "{}", again.stdout);
    assert_eq!(env.scalar("select count(*) from person__history"), "3");
}
