//! `igaflow sql` output formats and `igaflow runs` on the demo store.

use crate::common::*;

fn demo_store() -> Env {
    let env = Env::new();
    env.write_pipeline(&contoso_pipeline_text());
    env.run("complete", &[], &[("CONTOSO_DAY", "day1")])
        .expect_code(0);
    env
}

#[test]
fn count_in_every_format() {
    let env = demo_store();
    let store = env.store();
    let q = "select count(*) from person";

    let table = igaflow(&["sql", "--store", &store, q], &[]);
    table.expect_code(0);
    assert!(
        table.stdout.contains("count(*)") && table.stdout.contains("| 200"),
        "{}",
        table.stdout
    );

    let csv = igaflow(&["sql", "--store", &store, "--format", "csv", q], &[]);
    csv.expect_code(0);
    assert_eq!(csv.stdout, "count(*)\n200\n");

    let json = igaflow(&["sql", "--store", &store, "--format", "json", q], &[]);
    json.expect_code(0);
    let parsed: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(parsed, serde_json::json!([{"count(*)": 200}]));
    // A NULL is written as null: every row has every column.
    let nulls = igaflow(
        &[
            "sql",
            "--store",
            &store,
            "--format",
            "json",
            "select 1 as a, cast(null as varchar) as b, cast(null as date) as c",
        ],
        &[],
    );
    nulls.expect_code(0);
    let parsed: serde_json::Value = serde_json::from_str(&nulls.stdout).unwrap();
    assert_eq!(parsed, serde_json::json!([{"a": 1, "b": null, "c": null}]));

    let file = env.path("count.parquet");
    let file_s = file.to_string_lossy().into_owned();
    let pq = igaflow(
        &[
            "sql", "--store", &store, "--format", "parquet", "--output", &file_s, q,
        ],
        &[],
    );
    pq.expect_code(0);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let batches = rt.block_on(async {
        let ctx = datafusion::prelude::SessionContext::new();
        ctx.read_parquet(file_s.as_str(), Default::default())
            .await
            .unwrap()
            .collect()
            .await
            .unwrap()
    });
    let col = batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<datafusion::arrow::array::Int64Array>()
        .unwrap();
    assert_eq!(col.value(0), 200);

    // --output works for text formats too.
    let out_csv = env.path("count.csv");
    let out_csv_s = out_csv.to_string_lossy().into_owned();
    igaflow(
        &[
            "sql", "--store", &store, "--format", "csv", "--output", &out_csv_s, q,
        ],
        &[],
    )
    .expect_code(0);
    assert_eq!(std::fs::read_to_string(out_csv).unwrap(), "count(*)\n200\n");
}

#[test]
fn store_from_environment_and_bad_sql() {
    let env = demo_store();
    let store = env.store();
    let out = igaflow(
        &[
            "sql",
            "--format",
            "csv",
            "select count(*) as n from ad_group",
        ],
        &[("IGAFLOW_STORE", &store)],
    );
    out.expect_code(0);
    assert_eq!(out.stdout, "n\n32\n");
    let bad = igaflow(&["sql", "--store", &store, "select nope from person"], &[]);
    bad.expect_code(2);
    assert!(bad.stderr.contains("nope"), "{}", bad.stderr);
    // A statement that would change a table is refused, not reported done and forgotten.
    for statement in [
        "insert into ad_group (dn) values ('G_New')",
        "drop table ad_group",
        "create table t as select 1",
    ] {
        let refused = igaflow(&["sql", "--store", &store, statement], &[]);
        refused.expect_code(2);
        assert!(
            refused.stderr.contains("only reads the store"),
            "{statement}: {}",
            refused.stderr
        );
    }
    let after = igaflow(
        &[
            "sql",
            "--store",
            &store,
            "--format",
            "csv",
            "select count(*) as n from ad_group",
        ],
        &[],
    );
    assert_eq!(after.stdout, "n\n32\n");
    let missing = igaflow(
        &[
            "sql",
            "--store",
            &env.path("nowhere").to_string_lossy(),
            "select 1",
        ],
        &[],
    );
    missing.expect_code(2);
}

#[test]
fn runs_lists_past_runs_and_as_of_reads_old_state() {
    let env = demo_store();
    let first = env.scalar("select run_id from runs");
    env.run("complete", &[], &[("CONTOSO_DAY", "day2")])
        .expect_code(0);
    let store = env.store();
    let runs = igaflow(&["runs", "--store", &store], &[]);
    runs.expect_code(0);
    assert_eq!(
        runs.stdout.matches("| manual").count(),
        2,
        "{}",
        runs.stdout
    );
    let one = igaflow(&["runs", "--store", &store, &first], &[]);
    one.expect_code(0);
    assert!(
        one.stdout.contains("sync_hr") && one.stdout.contains("sync_ad"),
        "{}",
        one.stdout
    );

    let now = igaflow(
        &[
            "sql",
            "--store",
            &store,
            "--format",
            "csv",
            "select count(*) from person",
        ],
        &[],
    );
    assert_eq!(now.stdout, "count(*)\n203\n");
    let then = igaflow(
        &[
            "sql",
            "--store",
            &store,
            "--format",
            "csv",
            "--as-of",
            &first,
            "select count(*) from person",
        ],
        &[],
    );
    then.expect_code(0);
    assert_eq!(then.stdout, "count(*)\n200\n");
}

/// Runs igaflow with its standard output closed before it writes (a reader such as `head`
/// that stopped early); returns the exit code and standard error.
fn with_closed_stdout(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_igaflow"));
    cmd.args(args)
        .env_remove("IGAFLOW_STORE")
        .env_remove("IGAFLOW_FAILPOINT")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("the igaflow binary runs");
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_reader_that_stops_early_is_no_error() {
    let env = Env::new();
    env.write_pipeline(&contoso_pipeline_text());
    let (pipeline, store) = (env.pipeline(), env.store());
    // The run's report, a dry run's orders and a query's rows go to a closed pipe.
    for args in [
        vec![
            "run",
            &pipeline,
            "--job",
            "complete",
            "--store",
            &store,
            "--dry-run",
        ],
        vec!["run", &pipeline, "--job", "complete", "--store", &store],
        vec!["sql", "--store", &store, "select * from correlation_keys"],
        vec!["runs", "--store", &store],
    ] {
        let (code, stderr) = with_closed_stdout(&args, &[("CONTOSO_DAY", "day1")]);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    assert_eq!(env.scalar("select count(*) from runs"), "1");
}
