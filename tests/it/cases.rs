//! Golden cases under `datasets/cases/<case>/`: a pipeline, its exports per day, `case.toml`
//! listing the steps (day, job, extra arguments, expected exit code) and, per step, the orders
//! the run must emit (a reviewed JSON file: the orders of every connector's file, without their
//! ids) and queries with their expected CSV output.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::common::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    step: Vec<Step>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    day: String,
    job: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    exit: i32,
    /// Start this step on a new, empty store.
    #[serde(default)]
    fresh_store: bool,
    /// Expected orders of the run (all connectors), without `order_id`.
    orders: Option<String>,
    /// A text the run's report or error must contain.
    #[serde(default)]
    report_contains: Vec<String>,
    #[serde(default)]
    query: Vec<Query>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Query {
    sql: String,
    /// The expected `igaflow sql --format csv` output, header included.
    csv: String,
}

/// The orders emitted by `run_id` (every connector's JSON file, by connector name), checked
/// against the spec's shape, with their ids removed.
pub fn emitted_orders(store: &str, run_id: &str) -> Vec<Value> {
    let dir = Path::new(store).join("_orders").join(run_id);
    let mut files: Vec<_> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect(),
        Err(_) => return Vec::new(),
    };
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        assert_eq!(doc["run_id"], run_id, "{}", f.display());
        assert_eq!(doc["connector"], f.file_stem().unwrap().to_str().unwrap());
        assert!(
            doc["generated_at"]
                .as_str()
                .is_some_and(|s| s.ends_with('Z')),
            "{doc}"
        );
        for mut o in doc["orders"].as_array().unwrap().clone() {
            let id = o["order_id"].as_str().unwrap().to_string();
            assert!(
                id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit()),
                "{id}"
            );
            o.as_object_mut().unwrap().remove("order_id");
            out.push(o);
        }
    }
    out
}

fn run_case(dir: &Path) {
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let case: Case = toml::from_str(&std::fs::read_to_string(dir.join("case.toml")).unwrap())
        .unwrap_or_else(|e| panic!("{name}/case.toml: {e}"));
    let store_dir = tempfile::tempdir().unwrap();
    let mut store = store_dir
        .path()
        .join("store")
        .to_string_lossy()
        .into_owned();
    let pipeline = dir.to_string_lossy().into_owned();
    for (i, step) in case.step.iter().enumerate() {
        if step.fresh_store {
            store = store_dir
                .path()
                .join(format!("store{i}"))
                .to_string_lossy()
                .into_owned();
        }
        let what = format!("case {name}, step {} ({} {})", i + 1, step.day, step.job);
        let mut args = vec![
            "run",
            pipeline.as_str(),
            "--job",
            step.job.as_str(),
            "--store",
            store.as_str(),
        ];
        args.extend(step.args.iter().map(String::as_str));
        let out = igaflow(&args, &[("CASE_DAY", step.day.as_str())]);
        assert_eq!(out.code, Some(step.exit), "{what}: {out:?}");
        let messages = if step.report_contains.is_empty() {
            String::new()
        } else {
            let run_id = run_id_of(&out);
            query(
                &store,
                &format!("select message from task_runs where run_id = '{run_id}'"),
            )
            .concat()
            .join("\n")
        };
        for text in &step.report_contains {
            assert!(
                out.stdout.contains(text) || out.stderr.contains(text) || messages.contains(text),
                "{what}: `{text}` not in\n{}\n{}",
                out.stdout,
                out.stderr
            );
        }
        if let Some(expected) = &step.orders {
            let run_id = run_id_of(&out);
            let expected: Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join(expected)).unwrap())
                    .unwrap_or_else(|e| panic!("{name}/{expected}: {e}"));
            if expected.as_array().is_some_and(Vec::is_empty) {
                // No orders is still a file per connector, with an empty list (SPEC 6: "per
                // run and connector").
                let dir = Path::new(&store).join("_orders").join(&run_id);
                let docs: Vec<Value> = std::fs::read_dir(&dir)
                    .unwrap_or_else(|e| panic!("{what}: {}: {e}", dir.display()))
                    .map(|e| e.unwrap().path())
                    .filter(|p| p.extension().is_some_and(|e| e == "json"))
                    .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
                    .collect();
                assert!(
                    !docs.is_empty() && docs.iter().all(|d| d["orders"] == Value::Array(vec![])),
                    "{what}: {docs:?}"
                );
            }
            let got = Value::Array(emitted_orders(&store, &run_id));
            assert_eq!(
                got,
                expected,
                "{what}: orders differ\n--- got\n{}",
                serde_json::to_string_pretty(&got).unwrap()
            );
        }
        for q in &step.query {
            let out = igaflow(&["sql", "--store", &store, "--format", "csv", &q.sql], &[]);
            out.expect_code(0);
            assert_eq!(out.stdout.trim_end(), q.csv.trim_end(), "{what}: {}", q.sql);
        }
    }
}

#[test]
fn golden_cases() {
    let root = repo().join("datasets/cases");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("case.toml").is_file())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 3,
        "golden cases missing under {}",
        root.display()
    );
    let only = std::env::var("IGAFLOW_CASE").ok();
    for dir in dirs {
        if only.as_ref().is_some_and(|o| !dir.ends_with(o)) {
            continue;
        }
        run_case(&dir);
    }
}

/// SPEC 5 and 11.4: an owner matched by several accounts of a resource type keeps one linked
/// account — an existing link first, then the first rule, then the smallest key (byte order);
/// the others are `duplicate`.
#[test]
fn an_owner_keeps_its_existing_link_then_the_first_rule_then_the_smallest_key() {
    let env = Env::new();
    let text = std::fs::read_to_string(repo().join("datasets/cases/correlation/pipeline.toml"))
        .unwrap()
        .replace("${CASE_DAY:-day1}/hr", "../exports/hr")
        .replace("${CASE_DAY:-day1}/app", "../exports/app");
    env.write_pipeline(&text);
    env.write(
        "exports/hr/persons.csv",
        "id,name,mail,status\nP1,Ann,ann@x.com,active\nP2,Bob,bob@x.com,active\n",
    );
    // P1: z1 by rule 1 (owner_id), b1 only by rule 2 (mail): the rule wins over the key.
    // P2: n2 and m2 both by rule 1: the smaller key.
    let day1 = "login,owner_id,email\nz1,P1,\nb1,,ann@x.com\nn2,P2,\nm2,P2,\n";
    env.write("exports/app/accounts.csv", day1);
    env.run("complete", &[], &[]).expect_code(0);
    let correlations = || {
        env.query(
            "select account_key, owner_key, cast(rule as varchar), status from correlations \
             order by account_key",
        )
    };
    assert_eq!(
        correlations(),
        [
            ["b1", "P1", "2", "duplicate"],
            ["m2", "P2", "1", "linked"],
            ["n2", "P2", "1", "duplicate"],
            ["z1", "P1", "1", "linked"],
        ]
    );
    // Day 2: a new account of P2 by rule 1 whose key is smaller than m2's; m2 keeps its link.
    env.write("exports/app/accounts.csv", format!("{day1}a2,P2,\n"));
    env.run("complete", &[], &[]).expect_code(0);
    assert_eq!(
        correlations(),
        [
            ["a2", "P2", "1", "duplicate"],
            ["b1", "P1", "2", "duplicate"],
            ["m2", "P2", "1", "linked"],
            ["n2", "P2", "1", "duplicate"],
            ["z1", "P1", "1", "linked"],
        ]
    );
}
