//! `igaflow generate`: same seed → same bytes; the company has the advertised shape; its
//! pipeline runs the complete job, the next day and the incremental job.

use std::collections::BTreeMap;
use std::path::Path;

use crate::common::*;

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn lines(env: &Env, rel: &str) -> usize {
    std::fs::read_to_string(env.path(rel))
        .unwrap()
        .lines()
        .count()
        - 1
}

#[test]
fn generated_company_is_reproducible_realistic_and_runs() {
    let env = Env::new();
    let generate = |dir: &str, seed: &str| {
        let out = env.path(dir).to_string_lossy().into_owned();
        igaflow(
            &["generate", "--identities", "1500", "--seed", seed, &out],
            &[],
        )
        .expect_code(0);
    };
    generate("a", "11");
    generate("b", "11");
    generate("c", "12");
    let a = files(&env.path("a"));
    assert_eq!(a, files(&env.path("b")), "same seed, same bytes");
    assert!(a.len() >= 9, "{:?}", a.keys().collect::<Vec<_>>());
    assert_ne!(
        a["day1/hr/persons.csv"],
        files(&env.path("c"))["day1/hr/persons.csv"],
        "another seed, another company"
    );

    // Shape: ~1.1 AD accounts per person, ~12 memberships per account, ≥ 50 groups,
    // 300 roles and composites, day 2 with 1% joiners, an incremental change set.
    let persons = lines(&env, "a/day1/hr/persons.csv");
    let accounts = lines(&env, "a/day1/ad/accounts.csv");
    let memberships = lines(&env, "a/day1/ad/memberships.csv");
    assert_eq!(persons, 1500);
    let per_person = accounts as f64 / persons as f64;
    assert!(
        (1.05..1.15).contains(&per_person),
        "{per_person} accounts per person"
    );
    let per_account = memberships as f64 / accounts as f64;
    assert!(
        (10.0..14.0).contains(&per_account),
        "{per_account} memberships per account"
    );
    assert!(lines(&env, "a/day1/ad/groups.csv") >= 50);
    let pipeline = String::from_utf8(a["pipeline/pipeline.toml"].clone()).unwrap();
    assert_eq!(pipeline.matches("\n[[role]]").count(), 300);
    assert!(pipeline.matches("[[composite_role]]").count() >= 5);
    assert_eq!(pipeline.matches("\n[[resource_type]]").count(), 2);
    assert_eq!(lines(&env, "a/day2/hr/persons.csv"), 1515);
    let accounts_text = String::from_utf8(a["day1/ad/accounts.csv"].clone()).unwrap();
    for kind in ["svc-", "adm-", "former"] {
        assert!(accounts_text.contains(kind), "{kind} accounts");
    }
    assert!(lines(&env, "a/incremental/hr/persons.csv") >= 2);
    assert!(lines(&env, "a/requests/assignments.csv") >= 1);

    // The pipeline validates and its jobs run over the three exports.
    let pipeline_dir = env.path("a/pipeline").to_string_lossy().into_owned();
    igaflow(&["validate", &pipeline_dir], &[]).expect_code(0);
    let store = env.path("store").to_string_lossy().into_owned();
    let run = |job: &str, day: &str| {
        let out = igaflow(
            &["run", &pipeline_dir, "--job", job, "--store", &store],
            &[("GEN_DAY", day)],
        );
        out.expect_code(0);
        out
    };
    run("complete", "day1");
    let q = |sql: &str| query(&store, sql)[0][0].clone();
    assert_eq!(q("select count(*) from person"), "1500");
    let linked: u64 = q(
        "select count(*) from correlations where status = 'linked' and resource_type = 'ad_user'",
    )
    .parse()
    .unwrap();
    assert!(linked > 1300, "{linked} linked AD accounts");
    let added: u64 = q("select count(*) from provisioning_orders where change_type = 'Added'")
        .parse()
        .unwrap();
    assert!(
        added > 10,
        "joiners without an account get Added orders: {added}"
    );
    // Service and admin accounts are classified (and protected), not orphans.
    assert_eq!(
        q("select count(*) from classification where class in ('service', 'admin')"),
        q(
            "select count(*) from ad_account where sam_account_name like 'svc-%' or sam_account_name like 'adm-%'"
        )
    );
    assert_ne!(
        q("select count(*) from classification where class = 'orphan'"),
        "0"
    );
    run("complete", "day2");
    assert_eq!(q("select count(*) from person"), "1515");
    run("incremental", "incremental");
}

/// A complete run stores each role-model table in its key order, in every file (key lookups
/// and merges read them by that order), also when a type's rows span many batches: a table
/// whose rows come in order is written without a sort, and a read on two partitions would
/// interleave its batches. 9,000 identities give about 9,900 AD accounts, more than one
/// batch (8,192 rows) of correlations and classification per type.
#[test]
fn a_complete_run_stores_the_role_model_tables_in_key_order() {
    let env = Env::new();
    let out = env.path("company").to_string_lossy().into_owned();
    igaflow(
        &["generate", "--identities", "9000", "--seed", "5", &out],
        &[],
    )
    .expect_code(0);
    let pipeline_dir = env.path("company/pipeline").to_string_lossy().into_owned();
    igaflow(
        &[
            "run",
            &pipeline_dir,
            "--job",
            "complete",
            "--store",
            &env.store(),
        ],
        &[("GEN_DAY", "day1")],
    )
    .expect_code(0);
    for (table, key) in [
        ("correlations", &["resource_type", "account_key"][..]),
        ("classification", &["entity", "account_key"]),
        ("assigned_resources", &["resource_type", "owner_key"]),
        ("assigned_roles", &["owner_key", "role", "origin"]),
    ] {
        let rows = stored_rows(&env, table, key);
        assert!(rows.len() > 9000, "{table}: {} rows", rows.len());
        // Each file of the last commit holds a part of the table in order (a part per core).
        let files = delta_commits(&env, table)
            .last()
            .unwrap()
            .iter()
            .filter(|a| a["add"]["path"].is_string())
            .count();
        let descents = rows.windows(2).filter(|w| w[1] <= w[0]).count();
        assert!(
            descents < files,
            "{table}: {descents} rows not after the row before them, in {files} file(s)"
        );
    }
}
