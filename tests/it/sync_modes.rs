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

/// The task's status in the last run.
fn last_status(env: &Env, task: &str) -> String {
    env.scalar(&format!(
        "select t.status from task_runs t join runs r on t.run_id = r.run_id \
         where t.task = '{task}' order by r.started_at desc limit 1"
    ))
}

#[test]
fn an_empty_export_creates_its_tables_and_new_columns_reach_unchanged_tables() {
    // A new system with no rows yet: its tables exist, empty and typed.
    let env = Env::new();
    env.write_pipeline(&hr_pipeline(""));
    env.write("exports/hr/persons.csv", HR_HEADER);
    let out = env.run("complete", &[], &[]);
    out.expect_code(0);
    assert!(out.stdout.contains("(table created)"), "{}", out.stdout);
    assert_eq!(last_status(&env, "sync_hr"), "succeeded");
    assert_eq!(env.scalar("select count(*) from person"), "0");
    assert_eq!(env.scalar("select count(*) from person__history"), "0");
    assert_eq!(
        env.scalar("select arrow_typeof(level) from (select level from person union all select 1)"),
        "Int64"
    );
    // Nothing more to do the next time.
    env.run("complete", &[], &[]).expect_code(0);
    assert_eq!(last_status(&env, "sync_hr"), "no_changes");

    // Rows, then a column added to the configuration while the rows stay the same: the
    // table gets the column (NULL) without a change recorded in the history.
    env.write("exports/hr/persons.csv", persons_csv(1..=3));
    env.run("complete", &[], &[]).expect_code(0);
    let text = hr_pipeline("").replace("note = \"string\"", "note = \"string\"\nsite = \"string\"");
    env.write_pipeline(&text);
    let body = persons_csv(1..=3)
        .replacen("note\n", "note,site\n", 1)
        .replace(",\n", ",,\n");
    env.write("exports/hr/persons.csv", body);
    let out = env.run("complete", &[], &[]);
    out.expect_code(0);
    assert!(out.stdout.contains("(columns changed)"), "{}", out.stdout);
    assert_eq!(
        env.scalar("select count(*) from person where site is null"),
        "3"
    );
    assert_eq!(env.scalar("select count(*) from person__history"), "3");
    assert_eq!(
        env.scalar("select count(*) from person__history where site is null"),
        "3"
    );
    env.run("complete", &[], &[]).expect_code(0);
    assert_eq!(last_status(&env, "sync_hr"), "no_changes");

    // A computed column whose new expression changes its type: the synchronization only
    // retypes the stored values; the expressions task recomputes them and records the change.
    let with_expressions = |computed: &str| {
        format!(
            "{}\n[[job]]\nname = \"expressions\"\n[[job.task]]\nname = \"expressions\"\ntype = \"update_entity_property_expressions\"\n",
            text.replace(
                "[entity.columns]",
                &format!("computed = {{ n = \"{computed}\" }}\n[entity.columns]")
            )
        )
    };
    env.write_pipeline(&with_expressions("level * 2"));
    env.run("complete", &[], &[]).expect_code(0);
    env.run("expressions", &[], &[]).expect_code(0);
    assert_eq!(
        env.scalar("select n from person where employee_id = 'E00001'"),
        "2"
    );
    let versions = env.scalar("select count(*) from person__history");
    env.write_pipeline(&with_expressions("level * 2.5"));
    let out = env.run("complete", &[], &[]);
    out.expect_code(0);
    assert!(out.stdout.contains("(columns changed)"), "{}", out.stdout);
    assert_eq!(
        env.scalar("select cast(n as varchar) from person where employee_id = 'E00001'"),
        "2.0"
    );
    let out = env.run("expressions", &[], &[]);
    out.expect_code(0);
    assert_eq!(
        env.scalar("select cast(n as varchar) from person where employee_id = 'E00001'"),
        "2.5"
    );
    // E00001..E00003 have levels 1..3: each value changed, each change is a new version.
    let after: u64 = env
        .scalar("select count(*) from person__history")
        .parse()
        .unwrap();
    assert_eq!(after, versions.parse::<u64>().unwrap() + 3);
    assert_eq!(
        env.scalar(
            "select count(*) from person__history where _change = 'update' and _valid_to is null"
        ),
        "3"
    );
}

#[test]
fn a_retyped_computed_column_leaves_no_stale_statistics_warnings() {
    let env = Env::new();
    env.write_pipeline(&hr_pipeline("computed = { senior = \"level > 2\" }"));
    env.write("exports/hr/persons.csv", persons_csv(1..=5));
    env.run("complete", &[], &[]).expect_code(0);
    // bool → int: the table and its history are written again with the new type.
    env.write_pipeline(&hr_pipeline(
        "computed = { senior = \"CASE WHEN level > 2 THEN 10 ELSE 20 END\" }",
    ));
    env.run("complete", &[], &[]).expect_code(0);
    // Every library warning shown (IGAFLOW_LOG), with backtraces: the Delta kernel must not
    // meet the old files' boolean statistics under the new integer type.
    for table in ["person", "person__history"] {
        let out = igaflow(
            &[
                "sql",
                "--store",
                &env.store(),
                &format!("select count(*) from {table}"),
            ],
            &[("IGAFLOW_LOG", "warn"), ("RUST_BACKTRACE", "1")],
        );
        out.expect_code(0);
        assert!(!out.stderr.contains("stats"), "{table}: {}", out.stderr);
    }
}

#[test]
fn a_computed_column_retyped_with_values_that_do_not_convert_is_recomputed() {
    let env = Env::new();
    let exprs_job = "\n[[job]]\nname = \"exprs\"\n[[job.task]]\nname = \"exprs\"\ntype = \"update_entity_property_expressions\"\n";
    let with = |computed: &str| format!("{}{exprs_job}", hr_pipeline(computed));
    env.write_pipeline(&with(
        "computed = { tag = \"'n=' || cast(level as varchar)\" }",
    ));
    env.write("exports/hr/persons.csv", persons_csv(1..=5));
    env.run("complete", &[], &[]).expect_code(0);
    // Text to bool: 'n=1' converts to nothing. The synchronization keeps going (the stored
    // values that do not convert are NULL) and the expressions task recomputes them.
    env.write_pipeline(&with("computed = { tag = \"level > 2\" }"));
    env.run("complete", &[], &[]).expect_code(0);
    env.run("exprs", &[], &[]).expect_code(0);
    assert_eq!(
        env.query("select employee_id, cast(tag as varchar) from person order by employee_id"),
        [
            ["E00001", "false"],
            ["E00002", "false"],
            ["E00003", "true"],
            ["E00004", "true"],
            ["E00005", "false"],
        ]
    );
    // The open history versions carry the recomputed values too.
    assert_eq!(
        env.scalar(
            "select count(*) from person__history where _valid_to is null and tag = (level > 2)"
        ),
        "5"
    );
}

#[test]
fn a_division_by_zero_in_a_computed_column_names_the_first_failing_row() {
    let env = Env::new();
    env.write_pipeline(&hr_pipeline(
        "computed = { shifted = \"level - 2\", ratio = \"100 / shifted\" }",
    ));
    // level = i % 5: E00002, E00007, … divide by zero; the engine's message names no value.
    env.write("exports/hr/persons.csv", persons_csv(1..=40));
    let out = env.run("complete", &[], &[]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("computed column `ratio`")
            && out
                .stderr
                .contains("first failing row: key `E00002` of entity `person`")
            && out.stderr.contains("(shifted = 0)"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_computed_column_failing_on_the_data_names_its_line_and_the_value() {
    let env = Env::new();
    env.write_pipeline(&hr_pipeline(
        "computed = { initial = \"substr(name, 1, 1)\", n = \"cast(name as int)\" }",
    ));
    env.write("exports/hr/persons.csv", persons_csv(1..=3));
    let out = env.run("complete", &[], &[]);
    out.expect_code(2);
    let line = hr_pipeline("")
        .lines()
        .position(|l| l.starts_with("key = "))
        .unwrap()
        + 2;
    assert!(
        out.stderr.contains(&format!("pipeline.toml:{line}:"))
            && out
                .stderr
                .contains("computed column `n` = \"cast(name as int)\"")
            && out.stderr.contains("Person 1")
            && out.stderr.contains("try_cast"),
        "{}",
        out.stderr
    );
    // Nothing was committed.
    assert!(
        env.query("select table_name from information_schema.tables where table_name = 'person'")
            .is_empty()
    );
}

/// With `[store] deletion_vectors`, an incremental synchronization patches the entity and its
/// history (deletion vectors and a file of new rows) and ends with the same rows as without;
/// a computed column retyped since makes it rewrite both tables instead (appended rows of the
/// new type could not join the old files).
#[test]
fn incremental_synchronization_with_deletion_vectors_patches_and_rewrites_retyped_tables() {
    let computed = |expr: &str| format!("computed = {{ senior = \"{expr}\" }}");
    let with_dv = |text: String| format!("{text}\n[store]\ndeletion_vectors = true\n");
    let changes = [
        "command,employee_id,name,birth_date,level,note\n\
         update,E00002,Renamed,1980-01-01,4,\n\
         delete,E00003,,,,\n\
         insert,E00009,New,1990-02-02,1,\n",
        "command,employee_id,name,birth_date,level,note\n\
         update,E00004,Again,1980-01-01,5,x\n\
         insert,E00003,Back,1991-03-03,3,\n",
    ];
    // Whether the table's last Delta commit adds a file with a deletion vector.
    let patched_last = |env: &Env, table: &str| is_patch(&delta_commits(env, table).pop().unwrap());
    let rows = |env: &Env| {
        (
            env.query(
                "select employee_id, name, level, cast(senior as varchar) from person order by 1",
            ),
            env.query(
                "select employee_id, name, cast(senior as varchar), _change, _valid_to is null \
                 from person__history order by 1, _valid_from, 4",
            ),
        )
    };
    let (patched, plain) = (Env::new(), Env::new());
    for (env, dv) in [(&patched, true), (&plain, false)] {
        let text = |expr: &str| {
            let t = hr_pipeline(&computed(expr));
            if dv { with_dv(t) } else { t }
        };
        env.write_pipeline(&text("level > 2"));
        env.write("exports/hr/persons.csv", persons_csv(1..=5));
        env.run("complete", &[], &[]).expect_code(0);
        env.write("exports/hr/persons.csv", changes[0]);
        env.run("incremental", &[], &[]).expect_code(0);
        for table in ["person", "person__history"] {
            assert_eq!(patched_last(env, table), dv, "{table}");
        }
        // Filtered reads (patched: the Parquet scan's pruning with the deletion vectors as row
        // selections): the replaced and deleted rows stay hidden.
        assert_eq!(
            env.query("select name from person where employee_id = 'E00002'"),
            vec![vec!["Renamed".to_string()]]
        );
        assert!(
            env.query("select name from person where employee_id = 'E00003'")
                .is_empty()
        );
        assert_eq!(
            env.query("select count(*) from person where level >= 1"),
            vec![vec!["4".to_string()]] // E00001, E00002 (now 4), E00004, E00009; E00005 is 0
        );
        // Retyped (bool → int) and changed again: a rewrite, with the new type.
        env.write_pipeline(&text("CASE WHEN level > 2 THEN 10 ELSE 20 END"));
        env.write("exports/hr/persons.csv", changes[1]);
        env.run("incremental", &[], &[]).expect_code(0);
        assert!(!patched_last(env, "person"));
    }
    assert_eq!(rows(&patched), rows(&plain));
    let (state, _) = rows(&patched);
    assert_eq!(state.len(), 6, "{state:?}");
    assert!(
        state.contains(&vec![
            "E00004".into(),
            "Again".into(),
            "5".into(),
            "10".into()
        ]),
        "{state:?}"
    );
}
