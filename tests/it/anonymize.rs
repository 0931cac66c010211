//! History anonymization (SPEC section 9): after an owner reaches status 5 no file of the
//! store holds their former personal values, other data and time travel survive, and the
//! owner stays anonymized while HR keeps sending them.

use crate::common::*;

const PIPELINE: &str = r#"name = "anon"

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
csv = { on_bad_row = "quarantine" }
columns = { id = "string", status = "string", anon = "int", first_name = "string", last_name = "string", email = "string" }
[entity.computed]
display_name = "first_name || ' ' || last_name"

[[entity]]
name = "account"
connector = "app"
file = "accounts.csv"
key = "login"
columns = { login = "string", owner_id = "string", uac = "int", display = "string", mail = "string" }

[lifecycle]
owner = "person"
state = "CASE status WHEN 'active' THEN 1 WHEN 'terminated' THEN 2 WHEN 'suspended' THEN 3 END"
anonymization_status = "anon"
anonymize = { first_name = "'ANONYMIZED'", last_name = "'ANONYMIZED'", email = "NULL" }

[[resource_type]]
name = "app_user"
owner = "person"
target = "account"
correlation = [ { target = "owner_id", owner = "id" } ]
scalars = { login = "lower(id)", owner_id = "id", display = "display_name", mail = "email" }
create_only = ["login", "owner_id"]
disable = { uac = "514" }
lifecycle = { update = true, active = "uac <> 514" }

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
[[job.task]]
name = "orders"
type = "generate_provisioning_orders"
"#;

const HEADER: &str = "id,status,anon,first_name,last_name,email\n";
const OTHERS: &str = "P2,active,0,Annabel,Otherwood,annabel.otherwood@example.org\n";
const APP_HEADER: &str = "login,owner_id,uac,display,mail\n";
const OTHER_ACCOUNT: &str = "p2,P2,512,Annabel Otherwood,annabel.otherwood@example.org\n";

/// The personal values of P1 over the scenario (a maiden and a married name).
const SECRETS: [&str; 5] = [
    "Zelda",
    "Quixote",
    "Marchbanks",
    "zelda.quixote@example.org",
    "zelda.marchbanks@example.org",
];

fn day(env: &Env, persons: &str, accounts: &str) -> String {
    env.write(
        "exports/hr/persons.csv",
        format!("{HEADER}{persons}{OTHERS}"),
    );
    env.write(
        "exports/app/accounts.csv",
        format!("{APP_HEADER}{accounts}{OTHER_ACCOUNT}"),
    );
    let out = env.run("j", &[], &[]);
    out.expect_code(0);
    run_id_of(&out)
}

/// Every file under the store holding one of the secrets (raw bytes, exact case).
fn files_with_secrets(env: &Env) -> Vec<String> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&env.path("store"), &mut files);
    assert!(files.len() > 20, "the store has files: {files:?}");
    let mut hits = Vec::new();
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        for s in SECRETS {
            if bytes.windows(s.len()).any(|w| w == s.as_bytes()) {
                hits.push(format!("{} holds {s}", f.display()));
            }
        }
    }
    hits
}

#[test]
fn history_anonymization_leaves_no_personal_bytes_in_the_store() {
    let env = Env::new();
    env.write_pipeline(PIPELINE);
    let p1_account =
        |display: &str, mail: &str, uac: u32| format!("p1,P1,{uac},{display},{mail}\n");

    // Day 1: P1 with their maiden name; day 2: married name (history keeps both), and a
    // duplicated HR line of P1 lands in rejected_rows.
    let day1 = day(
        &env,
        "P1,active,0,Zelda,Quixote,zelda.quixote@example.org\n",
        &p1_account("Zelda Quixote", "zelda.quixote@example.org", 512),
    );
    day(
        &env,
        "P1,active,0,Zelda,Marchbanks,zelda.marchbanks@example.org\nP1,active,0,Zelda,Quixote,zelda.quixote@example.org\n",
        &p1_account("Zelda Quixote", "zelda.quixote@example.org", 512),
    );
    assert_eq!(
        env.scalar("select count(*) from rejected_rows where raw like '%Quixote%'"),
        "1"
    );
    assert!(
        !files_with_secrets(&env).is_empty(),
        "the scan finds what is there"
    );
    let p2_history =
        env.query("select * from person__history where id = 'P2' order by _valid_from");
    let correlations_day1 =
        env.query("select account_key, owner_key, status from correlations order by 1");

    // Day 3: P1 leaves and is to be anonymized; the account still shows the married name.
    // The anonymized values differ from the target's → status 3, and the orders carry them.
    day(
        &env,
        "P1,terminated,2,Zelda,Marchbanks,zelda.marchbanks@example.org\n",
        &p1_account("Zelda Marchbanks", "zelda.marchbanks@example.org", 512),
    );
    assert_eq!(
        env.query(
            "select account_key, anonymization_status from identity_states where account_key = 'p1'"
        ),
        [["p1", "3"]]
    );
    assert_eq!(env.scalar("select count(*) from anonymized_owners"), "0");
    let anonymizing = env.query(
        "select change_type, attributes from provisioning_orders where account_key = 'p1' and state = 'pending'",
    );
    assert!(
        anonymizing
            .iter()
            .any(|r| r[1].contains("ANONYMIZED ANONYMIZED") && r[1].contains("\"mail\"")),
        "orders provision the anonymized values: {anonymizing:?}"
    );

    // Day 4: the target now holds the anonymized values (and is disabled) → status 4, the
    // history is scrubbed in the same run → status 5.
    env.write(
        "exports/hr/persons.csv",
        format!("{HEADER}P1,terminated,2,Zelda,Marchbanks,zelda.marchbanks@example.org\n{OTHERS}"),
    );
    env.write(
        "exports/app/accounts.csv",
        format!(
            "{APP_HEADER}{}{OTHER_ACCOUNT}",
            p1_account("ANONYMIZED ANONYMIZED", "", 514)
        ),
    );
    let out = env.run("j", &[], &[]);
    out.expect_code(0);
    assert!(
        out.stdout.contains("history anonymization: 1 owner(s)"),
        "{}",
        out.stdout
    );
    assert_eq!(
        env.query("select owner_key, status from anonymized_owners"),
        [["P1", "5"]]
    );
    assert_eq!(
        env.scalar("select anonymization_status from identity_states where account_key = 'p1'"),
        "5"
    );
    let hits = files_with_secrets(&env);
    assert!(
        hits.is_empty(),
        "personal bytes survive:\n{}",
        hits.join("\n")
    );
    all_tables_readable(&env);
    // The key indexes left are those of data files still there: the compaction deleted the
    // indexes of the files it deleted (an index is named after its file).
    let mut indexes = 0;
    for table in std::fs::read_dir(env.path("store/_igaflow/keys")).unwrap() {
        let table = table.unwrap().path();
        let name = table.file_name().unwrap().to_string_lossy().to_string();
        for index in std::fs::read_dir(&table).unwrap() {
            let index = index.unwrap().file_name().to_string_lossy().to_string();
            let data_file = &index[..index.find(".parquet.").unwrap() + ".parquet".len()];
            assert!(
                env.path(&format!("store/{name}/{data_file}")).exists(),
                "{index} of {name}: its data file is gone"
            );
            indexes += 1;
        }
    }
    assert!(indexes > 0, "the complete runs indexed their tables");
    // Day 3's order file, rewritten: the mail the order replaced was the value alone and its
    // anonymized value is NULL, so the old value is null (as in a table), not empty text.
    let day3_orders: Vec<serde_json::Value> = std::fs::read_dir(env.path("store/_orders"))
        .unwrap()
        .flat_map(|run| std::fs::read_dir(run.unwrap().path()).unwrap())
        .map(|f| f.unwrap().path())
        .filter(|f| f.extension().is_some_and(|x| x == "json"))
        .flat_map(|f| {
            let doc: serde_json::Value =
                serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap();
            doc["orders"].as_array().unwrap().clone()
        })
        .filter(|o| o["resource_key"] == "p1" && o["attributes"]["mail"].is_object())
        .collect();
    assert!(!day3_orders.is_empty(), "day 3's order of p1 is on file");
    for o in &day3_orders {
        assert_eq!(
            o["attributes"]["mail"]["old"],
            serde_json::Value::Null,
            "{o}"
        );
    }
    // The same in the stored orders' JSON attributes.
    let stored = env.query(
        "select attributes from provisioning_orders where account_key = 'p1' and attributes like '%\"mail\"%'",
    );
    assert!(!stored.is_empty(), "p1's orders with a mail are stored");
    for r in &stored {
        let a: serde_json::Value = serde_json::from_str(&r[0]).unwrap();
        assert_eq!(a["mail"]["old"], serde_json::Value::Null, "{}", r[0]);
    }
    // The target already holds the anonymized values: nothing is left to provision for P1.
    assert_eq!(
        env.query("select attributes from provisioning_orders where account_key = 'p1' and state = 'pending'"),
        Vec::<Vec<String>>::new()
    );

    // The owner's rows are anonymized, not removed; the other person is intact.
    assert_eq!(
        env.query("select first_name, last_name, email from person where id = 'P1'"),
        [["ANONYMIZED", "ANONYMIZED", ""]]
    );
    assert!(
        env.scalar("select count(*) from person__history where id = 'P1'")
            .parse::<u32>()
            .unwrap()
            >= 2
    );
    assert_eq!(
        env.query("select * from person__history where id = 'P2' order by _valid_from"),
        p2_history
    );
    assert_eq!(
        env.query("select first_name, email from person where id = 'P2'"),
        [["Annabel", "annabel.otherwood@example.org"]]
    );
    // Time travel: a table that never held the values keeps its versions; a scrubbed one
    // says why it is not available as of an earlier run.
    let store = env.store();
    let old = igaflow(
        &[
            "sql",
            "--store",
            &store,
            "--format",
            "csv",
            "--as-of",
            &day1,
            "select account_key, owner_key, status from correlations order by 1",
        ],
        &[],
    );
    out_rows_eq(&old, &correlations_day1);
    let gone = igaflow(
        &[
            "sql",
            "--store",
            &store,
            "--as-of",
            &day1,
            "select * from person",
        ],
        &[],
    );
    gone.expect_code(2);
    assert!(gone.stderr.contains("anonymized"), "{}", gone.stderr);

    // Anonymized stays anonymized: HR keeps sending the real name (with a duplicated line, a
    // line shifted by one field, whose name lands in the number column `anon`, and a status
    // column that says nothing any more); further runs store none of it.
    for _ in 0..2 {
        day(
            &env,
            "P1,terminated,0,Zelda,Marchbanks,zelda.marchbanks@example.org\nP1,terminated,0,Zelda,Marchbanks,zelda.marchbanks@example.org\nP1,terminated,Zelda,Marchbanks,zelda.marchbanks@example.org,0\n",
            &p1_account("ANONYMIZED ANONYMIZED", "", 514),
        );
        let hits = files_with_secrets(&env);
        assert!(
            hits.is_empty(),
            "personal bytes came back:\n{}",
            hits.join("\n")
        );
    }
    assert_eq!(
        env.query("select owner_key, status from anonymized_owners"),
        [["P1", "5"]]
    );
    assert_eq!(
        env.scalar("select count(*) from rejected_rows where reason = 'column `anon`: value not kept (anonymized owner)'"),
        "2",
        "{:?}",
        env.query("select line, reason from rejected_rows")
    );
    // Twice in a row: the second run of the task changes nothing.
    let again = env.run("j", &[], &[]);
    again.expect_code(0);
    let run = run_id_of(&again);
    assert_eq!(
        env.scalar(&format!(
            "select status from task_runs where run_id = '{run}' and task = 'identities'"
        )),
        "no_changes"
    );
}

fn out_rows_eq(out: &Out, expected: &[Vec<String>]) {
    out.expect_code(0);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(out.stdout.as_bytes());
    let rows: Vec<Vec<String>> = reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_string).collect())
        .collect();
    assert_eq!(rows, expected);
}

/// Days 1–3 of the scenario (P1 renamed, then to anonymize at status 3) and the day-4 exports
/// in which the target holds the anonymized values.
fn until_day_four(env: &Env) {
    env.write_pipeline(PIPELINE);
    day(
        env,
        "P1,active,0,Zelda,Quixote,zelda.quixote@example.org\n",
        "p1,P1,512,Zelda Quixote,zelda.quixote@example.org\n",
    );
    day(
        env,
        "P1,active,0,Zelda,Marchbanks,zelda.marchbanks@example.org\n",
        "p1,P1,512,Zelda Quixote,zelda.quixote@example.org\n",
    );
    day(
        env,
        "P1,terminated,2,Zelda,Marchbanks,zelda.marchbanks@example.org\n",
        "p1,P1,512,Zelda Marchbanks,zelda.marchbanks@example.org\n",
    );
    env.write(
        "exports/app/accounts.csv",
        format!("{APP_HEADER}p1,P1,514,ANONYMIZED ANONYMIZED,\n{OTHER_ACCOUNT}"),
    );
}

#[test]
fn a_killed_anonymization_is_finished_by_the_next_run() {
    let base = Env::new();
    until_day_four(&base);
    for failpoint in [
        "anonymize.before_commit",
        "anonymize.after_commit",
        "anonymize.compact",
    ] {
        let env = Env::new();
        copy_dir(base.dir.path(), env.dir.path());
        let killed = env.run("j", &[], &[("IGAFLOW_FAILPOINT", failpoint)]);
        assert_eq!(killed.signal, Some(9), "{failpoint}: {killed:?}");
        // The store stays readable, at the state before or after the scrub's commit.
        let status = env.scalar("select max(status) from anonymized_owners");
        assert!(
            status == "4" || status == "5",
            "{failpoint}: status {status}"
        );
        assert!(!env.query("select * from person where id = 'P2'").is_empty());

        env.run("j", &[], &[]).expect_code(0);
        assert_eq!(
            env.query("select owner_key, status from anonymized_owners"),
            [["P1", "5"]],
            "{failpoint}"
        );
        let hits = files_with_secrets(&env);
        assert!(
            hits.is_empty(),
            "{failpoint}: personal bytes survive:\n{}",
            hits.join("\n")
        );
        all_tables_readable(&env);
        assert_eq!(
            env.query("select first_name, email from person where id = 'P2'"),
            [["Annabel", "annabel.otherwood@example.org"]]
        );
    }
}

/// An owner whose account waits for its anonymized values (status 3) and who then leaves the
/// HR export has no row left to compute them from: the account stops waiting and the owner's
/// anonymization finishes in that run instead of never.
#[test]
fn an_owner_leaving_the_export_during_anonymization_is_still_anonymized() {
    let env = Env::new();
    until_day_four(&env);
    assert_eq!(
        env.scalar("select anonymization_status from identity_states where account_key = 'p1'"),
        "3"
    );
    // Day 4: P1 is gone from HR before the target got the anonymized values.
    env.write("exports/hr/persons.csv", format!("{HEADER}{OTHERS}"));
    env.write(
        "exports/app/accounts.csv",
        format!(
            "{APP_HEADER}p1,P1,512,Zelda Marchbanks,zelda.marchbanks@example.org\n{OTHER_ACCOUNT}"
        ),
    );
    let out = env.run("j", &[], &[]);
    out.expect_code(0);
    assert!(
        out.stdout.contains("history anonymization: 1 owner(s)"),
        "{}",
        out.stdout
    );
    assert_eq!(
        env.query("select owner_key, status from anonymized_owners"),
        [["P1", "5"]]
    );
    assert_eq!(
        env.query(
            "select account_key, owner_key, anonymization_status from identity_states order by 1"
        ),
        [["p1", "P1", "5"]]
    );
    let hits = files_with_secrets(&env);
    assert!(
        hits.is_empty(),
        "personal bytes survive:\n{}",
        hits.join("\n")
    );
    all_tables_readable(&env);
    assert_eq!(
        env.query("select first_name, email from person where id = 'P2'"),
        [["Annabel", "annabel.otherwood@example.org"]]
    );
    // The link stays (sticky) and the account keeps its treatment as the account of a gone
    // owner; a second run over the same exports finds nothing more to anonymize.
    assert_eq!(
        env.query("select owner_key, status from correlations where account_key = 'p1'"),
        [["P1", "linked"]]
    );
    let again = env.run("j", &[], &[]);
    again.expect_code(0);
    assert_eq!(
        env.query("select owner_key, status from anonymized_owners"),
        [["P1", "5"]]
    );
}

/// Every table of the store reads whole (no data file of a retained version is missing).
fn all_tables_readable(env: &Env) {
    let tables = env.query(
        "select table_name from information_schema.tables where table_schema = 'public' order by 1",
    );
    assert!(tables.len() > 10, "{tables:?}");
    for t in tables {
        let n = env.scalar(&format!("select count(*) from \"{}\" where 1 = 1", t[0]));
        assert!(n.parse::<u64>().is_ok(), "{}: {n}", t[0]);
        env.query(&format!("select * from \"{}\"", t[0]));
    }
}

/// A last name under six characters is replaced only as a whole word (`Ales` must leave
/// `Sales` alone), so a login made from it (`rales`) is found as a value of the computed
/// column that makes it, and replaced by what that column gives on the anonymized row.
#[test]
fn values_computed_from_a_short_name_are_scrubbed_and_other_words_are_not() {
    let env = Env::new();
    env.write_pipeline(include_str!("anonymize_short_name.toml"));
    let header_a = "aid,login,owner_id,email,dept,display,enabled\n";
    let header_p = "id,first,last,dept,status,mail,anon,note\n";
    let bob_a = "A-P2,bales,P2,bob@x.com,Sales,Bob Ales,true\n";
    let bob_p = "P2,Bob,Ales,Sales,active,bob@x.com,0,Ales family\n";
    let ren_a = "A-P1,rales,P1,renee.ales@x.com,Sales,Renée Ales,true\n";
    for (day, person, account) in [
        (
            "d1",
            "P1,Renée,Ales,Sales,active,renee.ales@x.com,0,n\n",
            ren_a,
        ),
        (
            "d2",
            "P1,Renée,Ales,Sales,terminated,renee.ales@x.com,2,n\n",
            ren_a,
        ),
        (
            "d3",
            "P1,Renée,Ales,Sales,terminated,renee.ales@x.com,2,n\n",
            "A-P1,aanonymized,P1,,Sales,ANONYMIZED ANONYMIZED,false\n",
        ),
    ] {
        env.write(
            &format!("exports/{day}/hr/persons.csv"),
            format!("{header_p}{person}{bob_p}"),
        );
        env.write(
            &format!("exports/{day}/app/accounts.csv"),
            format!("{header_a}{account}{bob_a}"),
        );
        env.run("complete", &[], &[("DAY", day)]).expect_code(0);
    }
    assert_eq!(
        env.scalar("select count(*) from anonymized_owners where owner_key = 'P1' and status = 5"),
        "1"
    );
    for (table, column) in [("account", "login"), ("account__history", "login")] {
        assert_eq!(
            env.scalar(&format!(
                "select count(*) from {table} where {column} = 'rales'"
            )),
            "0",
            "{table}"
        );
    }
    assert_eq!(
        env.scalar("select count(*) from provisioning_orders where attributes like '%rales%'"),
        "0"
    );
    for e in std::fs::read_dir(env.path("store/_orders")).unwrap() {
        for f in std::fs::read_dir(e.unwrap().path()).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|x| x == "json") {
                let text = std::fs::read_to_string(&f).unwrap();
                assert!(
                    !text.contains("rales") && !text.contains("Renée"),
                    "{}",
                    f.display()
                );
            }
        }
    }
    // Other words keep their letters: the department, the other person's login and note.
    assert_eq!(
        env.query("select dept, count(*) from account__history group by dept"),
        [[
            "Sales",
            env.scalar("select count(*) from account__history").as_str()
        ]]
    );
    assert_eq!(
        env.scalar("select count(*) from account__history where login = 'bales'"),
        "1"
    );
    assert_eq!(
        env.scalar("select note from person where id = 'P2'"),
        "Ales family"
    );
}
