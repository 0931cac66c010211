//! `igaflow validate`: every configuration problem with file, line and the offending text.

use crate::common::*;

/// The HR pipeline with `from` replaced by `to`, validated; returns stderr after checking exit 2.
fn invalid(from: &str, to: &str) -> (String, String) {
    let env = Env::new();
    std::fs::create_dir_all(env.path("exports/hr")).unwrap();
    let base = hr_pipeline("");
    assert!(base.contains(from), "{from}");
    let text = base.replacen(from, to, 1);
    env.write_pipeline(&text);
    let out = igaflow(&["validate", &env.pipeline()], &[]);
    out.expect_code(2);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    (text, out.stderr)
}

#[track_caller]
fn expect(case: &str, from: &str, to: &str, marker: &str, text_in_message: &str) {
    let (text, err) = invalid(from, to);
    let line = text[..text.find(marker).unwrap()].matches('\n').count() + 1;
    let loc = format!("pipeline.toml:{line}");
    assert!(
        err.contains(&loc) && err.contains(text_in_message),
        "{case}: expected `{loc}` and `{text_in_message}` in:\n{err}"
    );
}

#[test]
fn configuration_errors_name_line_and_text() {
    expect(
        "unknown key",
        "exports = \"../exports/hr\"",
        "exports = \"../exports/hr\"\nexprots = 1",
        "exprots",
        "exprots",
    );
    expect(
        "wrong type",
        "file = \"persons.csv\"",
        "file = 42",
        "file = 42",
        "file",
    );
    expect(
        "unknown connector",
        "connector = \"hr\"\nfile",
        "connector = \"sap\"\nfile",
        "connector = \"sap\"",
        "sap",
    );
    expect(
        "unknown column type",
        "level = \"int\"",
        "level = \"integer\"",
        "level = \"integer\"",
        "integer",
    );
    expect(
        "unknown key column",
        "key = \"employee_id\"",
        "key = \"employee\"",
        "key = \"employee\"",
        "employee",
    );
    expect(
        "computed expression that does not plan",
        "[entity.columns]",
        "computed = { label = \"nmae || '!'\" }\n[entity.columns]",
        "computed =",
        "nmae",
    );
    expect(
        "computed expression that does not parse",
        "[entity.columns]",
        "computed = { label = \"name ||| (\" }\n[entity.columns]",
        "computed =",
        "name ||| (",
    );
    expect(
        "duplicate entity",
        "[[job]]",
        "[[entity]]\nname = \"person\"\nconnector = \"hr\"\nfile = \"p2.csv\"\nkey = \"id\"\ncolumns = { id = \"string\" }\n\n[[job]]",
        "name = \"person\"\nconnector = \"hr\"\nfile = \"p2.csv\"",
        "person",
    );
    expect(
        "duplicate job",
        "name = \"incremental\"",
        "name = \"complete\"",
        "name = \"complete\"\n[[job.task]]\nname = \"sync_hr\"\ntype = \"synchronize\"\nconnector = \"hr\"\nmode = \"incremental\"",
        "complete",
    );
    expect(
        "unknown task type",
        "type = \"synchronize\"",
        "type = \"synchronise\"",
        "synchronise",
        "synchronise",
    );
    expect(
        "bad mode",
        "mode = \"complete\"",
        "mode = \"full\"",
        "mode = \"full\"",
        "full",
    );
}

#[test]
fn link_to_unknown_entity_and_all_problems_at_once() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("exports/hr")).unwrap();
    let text = format!(
        "{}\n[[link]]\nname = \"member_of\"\nconnector = \"hr\"\nfile = \"m.csv\"\nfrom = {{ entity = \"persn\", column = \"a\" }}\nto = {{ entity = \"person\", column = \"b\" }}\n",
        hr_pipeline("")
            .replace("file = 42", "")
            .replace("level = \"int\"", "level = \"integer\"")
    );
    env.write_pipeline(&text);
    let out = igaflow(&["validate", &env.pipeline()], &[]);
    out.expect_code(2);
    assert!(out.stderr.contains("persn"), "{}", out.stderr);
    assert!(
        out.stderr.contains("integer"),
        "both problems reported: {}",
        out.stderr
    );
}

#[test]
fn valid_demo_pipeline_and_toml_syntax_error() {
    let ok = igaflow(
        &[
            "validate",
            &repo().join("pipelines/contoso").to_string_lossy(),
        ],
        &[],
    );
    ok.expect_code(0);
    let env = Env::new();
    env.write_pipeline("name = \"x\"\n[connector.hr\nexports = 1\n");
    let out = igaflow(&["validate", &env.pipeline()], &[]);
    out.expect_code(2);
    assert!(out.stderr.contains("pipeline.toml:2"), "{}", out.stderr);
    let missing = igaflow(&["validate", &env.path("nowhere").to_string_lossy()], &[]);
    missing.expect_code(2);
    assert!(
        missing.stderr.contains("pipeline.toml"),
        "{}",
        missing.stderr
    );
}

/// The lifecycle golden case's pipeline with one replacement, validated: exit 2, and the message
/// names the place, the expression and its line.
#[track_caller]
fn model_error(from: &str, to: &str, texts: &[&str]) {
    let base =
        std::fs::read_to_string(repo().join("datasets/cases/lifecycle/pipeline.toml")).unwrap();
    assert!(base.contains(from), "{from}");
    let text = base.replacen(from, to, 1);
    let env = Env::new();
    for d in ["day1/hr", "day1/app"] {
        std::fs::create_dir_all(env.path(&format!("pipeline/{d}"))).unwrap();
    }
    env.write_pipeline(&text);
    let out = igaflow(&["validate", &env.pipeline()], &[]);
    out.expect_code(2);
    let line = text[..text.find(to).unwrap()].matches('\n').count() + 1;
    let loc = format!("pipeline.toml:{line}");
    assert!(
        out.stderr.contains(&loc),
        "expected {loc} in {}",
        out.stderr
    );
    for t in texts {
        assert!(out.stderr.contains(t), "expected `{t}` in {}", out.stderr);
    }
}

#[test]
fn role_model_expressions_are_planned() {
    model_error(
        "rule = \"dept = 'Sales'\"",
        "rule = \"dept = \"",
        &["role `sales`", "dept = "],
    );
    model_error(
        "rule = \"dept = 'IT'\"",
        "rule = \"depart = 'IT'\"",
        &["role `it`", "depart = 'IT'"],
    );
    model_error(
        "rule = \"status = 'active'\"",
        "rule = \"status\"",
        &["resource type `app_user`: rule", "not a condition"],
    );
    model_error(
        "login = \"lower(name)\"",
        "login = \"lower(nme)\"",
        &["scalar `login`", "lower(nme)"],
    );
    model_error(
        "email = \"mail\"",
        "emial = \"mail\"",
        &["`emial` is not a column of `account`"],
    );
    model_error(
        "{ target = \"owner_id\", owner = \"id\" }",
        "{ target = \"owner_id\", owner = \"ident\" }",
        &["correlation rule 1 owner", "ident"],
    );
    model_error(
        "rule = \"login LIKE 'svc\\\\_%'\"",
        "rule = \"logon LIKE 'svc%'\"",
        &["classification `service`", "logon"],
    );
    model_error(
        "{ role = \"sales\", target = \"G_SALES\" }",
        "{ role = \"sails\", target = \"G_SALES\" }",
        &["unknown role `sails`"],
    );
    model_error(
        "link = \"member\"",
        "link = \"members\"",
        &["unknown link `members`"],
    );
    model_error(
        "on_lost = \"disable\"",
        "on_lost = \"remove\"",
        &["on_lost = \"remove\""],
    );
}

/// The lifecycle golden case (pipeline and exports) with one replacement, in a temp folder.
fn lifecycle_case(from: &str, to: &str) -> (Env, String) {
    let env = Env::new();
    copy_dir(
        &repo().join("datasets/cases/lifecycle"),
        &env.path("pipeline"),
    );
    let base = std::fs::read_to_string(env.path("pipeline/pipeline.toml")).unwrap();
    assert!(base.contains(from), "{from}");
    let text = base.replacen(from, to, 1);
    env.write_pipeline(&text);
    (env, text)
}

/// `validate` and `run` both exit 2 naming `pipeline.toml:<line of marker>` and `texts`, and
/// the run commits nothing (its syncs would otherwise succeed first).
#[track_caller]
fn refused_before_running(env: &Env, text: &str, marker: &str, texts: &[&str]) {
    let line = text[..text.find(marker).unwrap()].matches('\n').count() + 1;
    let loc = format!("pipeline.toml:{line}");
    for out in [
        igaflow(&["validate", &env.pipeline()], &[]),
        env.run("complete", &[], &[]),
    ] {
        out.expect_code(2);
        assert!(
            out.stderr.contains(&loc),
            "expected {loc} in {}",
            out.stderr
        );
        for t in texts {
            assert!(out.stderr.contains(t), "expected `{t}` in {}", out.stderr);
        }
    }
    assert!(
        !std::path::Path::new(&env.store()).join("person").exists(),
        "the run committed a synchronization"
    );
}

/// Regression (review A, item 5): `update_identities` without `[lifecycle]` passed `validate`;
/// the run committed its synchronizations, then failed the task with exit 1.
#[test]
fn update_identities_needs_a_lifecycle_section() {
    let task = "[[job.task]]\nname = \"identities\"\ntype = \"update_identities\"\n";
    let (env, text) = lifecycle_case(
        "[[job.task]]\nname = \"orders\"",
        &format!("{task}[[job.task]]\nname = \"orders\""),
    );
    refused_before_running(&env, &text, task, &["task `identities`", "[lifecycle]"]);
}

/// Regression (review B, item 7): an `invoke_sql` task whose SQL file does not exist passed
/// `validate`; the run committed the tasks before it, then failed.
#[test]
fn invoke_sql_needs_its_sql_file() {
    let task = "[[job.task]]\nname = \"report\"\ntype = \"invoke_sql\"\nsql = \"missing.sql\"\noutput = \"out.csv\"\n";
    let (env, text) = lifecycle_case(
        "[[job.task]]\nname = \"orders\"",
        &format!("{task}[[job.task]]\nname = \"orders\""),
    );
    refused_before_running(
        &env,
        &text,
        "sql = \"missing.sql\"",
        &["task `report`", "missing.sql", "not found"],
    );
    // The same task with its file is valid.
    env.write("pipeline/missing.sql", "select 1 as one");
    igaflow(&["validate", &env.pipeline()], &[]).expect_code(0);
}

/// Regression (review B, item 5): a threshold percentage below 0 blocked every change, one
/// above 100 none; both passed `validate`. Synchronization and provisioning thresholds alike.
#[test]
fn threshold_percentages_lie_between_0_and_100() {
    for (key, value) in [
        ("max_deleted_percent", "-5"),
        ("max_deleted_percent", "150"),
        ("max_inserted_percent", "100.5"),
        ("max_updated_percent", "-0.1"),
    ] {
        let setting = format!("thresholds = {{ {key} = {value}, min_rows = 1 }}\n");
        expect(
            key,
            "[entity.columns]",
            &format!("{setting}[entity.columns]"),
            &setting,
            &format!("{key} = {value}: use a percentage between 0 and 100"),
        );
    }
    for key in [
        "max_deleted_percent",
        "max_added_percent",
        "max_modified_percent",
    ] {
        let setting = format!("thresholds = {{ {key} = 101 }}\n");
        let (env, text) = lifecycle_case(
            "on_lost = \"disable\"\n",
            &format!("on_lost = \"disable\"\n{setting}"),
        );
        refused_before_running(
            &env,
            &text,
            &setting,
            &[
                "resource type `app_user`",
                &format!("{key} = 101: use a percentage"),
            ],
        );
    }
    // The bounds themselves are valid, and a negative count is refused at its line.
    let env = Env::new();
    std::fs::create_dir_all(env.path("exports/hr")).unwrap();
    env.write_pipeline(&hr_pipeline(
        "thresholds = { max_deleted_percent = 0, max_inserted_percent = 100 }",
    ));
    igaflow(&["validate", &env.pipeline()], &[]).expect_code(0);
    expect(
        "negative count",
        "[entity.columns]",
        "thresholds = { max_deleted = -1 }\n[entity.columns]",
        "thresholds = { max_deleted",
        "-1",
    );
}

/// Regression (review B, item 9): the pipeline name is the default store's folder under
/// `var/`; `../../escape` put the store outside it.
#[test]
fn the_pipeline_name_is_a_plain_folder_name() {
    for bad in ["../../escape", "a/b", "a\\\\b", "..", ".", ""] {
        let to = format!("name = \"{bad}\"");
        expect(bad, "name = \"testhr\"", &to, &to, "name");
    }
    let env = Env::new();
    std::fs::create_dir_all(env.path("exports/hr")).unwrap();
    env.write_pipeline(&hr_pipeline("").replace("name = \"testhr\"", "name = \"hr-2.0 prod\""));
    igaflow(&["validate", &env.pipeline()], &[]).expect_code(0);
}

#[test]
fn one_mistake_gives_one_error_not_follow_on_ones() {
    // An unset variable in `exports`: the connector is still declared.
    let (_, err) = invalid(
        "exports = \"../exports/hr\"",
        "exports = \"${IGAFLOW_TEST_SURELY_UNSET}\"",
    );
    assert!(err.contains("IGAFLOW_TEST_SURELY_UNSET"), "{err}");
    assert!(!err.contains("unknown connector"), "{err}");
    // A task name used twice: no made-up dependency cycle.
    let (_, err) = invalid(
        "[[job]]\nname = \"incremental\"",
        "[[job.task]]\nname = \"sync_hr\"\ntype = \"synchronize\"\nconnector = \"hr\"\n\n[[job]]\nname = \"incremental\"",
    );
    assert!(err.contains("used twice"), "{err}");
    assert!(!err.contains("cycle"), "{err}");
}

/// A misspelt name in a task's `resource_types` is a configuration error at its line, not a
/// task that silently works on no resource type.
#[test]
fn an_unknown_resource_type_of_a_task_is_named_with_its_line() {
    let env = Env::new();
    copy_dir(
        &repo().join("datasets/cases/shared_account"),
        env.dir.path(),
    );
    let path = env.path("pipeline.toml");
    let text = std::fs::read_to_string(&path).unwrap().replacen(
        "type = \"compute_role_model\"",
        "type = \"compute_role_model\"\nresource_types = [\"app_user\", \"app_usr\"]",
        1,
    );
    std::fs::write(&path, &text).unwrap();
    let line = text[..text.find("resource_types =").unwrap()]
        .matches('\n')
        .count()
        + 1;
    let out = igaflow(&["validate", &env.dir.path().to_string_lossy()], &[]);
    out.expect_code(2);
    assert!(
        out.stderr.contains(&format!("pipeline.toml:{line}"))
            && out.stderr.contains("unknown resource type `app_usr`")
            && out.stderr.contains("app_admin"),
        "{}",
        out.stderr
    );
    let ok = text.replace(", \"app_usr\"", "");
    std::fs::write(&path, ok).unwrap();
    igaflow(&["validate", &env.dir.path().to_string_lossy()], &[]).expect_code(0);
}

/// A composite role named where the owners' roles are matched (a resource type's `roles`, a
/// link value's `role`) would never match: owners hold single roles only (SPEC 11.6).
#[test]
fn a_composite_role_where_single_roles_are_matched_is_a_configuration_error() {
    let base =
        std::fs::read_to_string(repo().join("datasets/cases/lifecycle/pipeline.toml")).unwrap();
    let composite =
        "[[composite_role]]\nname = \"staff\"\nroles = [\"sales\", \"it\"]\n\n[[resource_type]]";
    for (from, to, marker) in [
        (
            "{ role = \"sales\", target = \"G_SALES\" }",
            "{ role = \"staff\", target = \"G_SALES\" }",
            "role = \"staff\"",
        ),
        (
            "rule = \"status = 'active'\"",
            "roles = [\"staff\"]",
            "roles = [\"staff\"]",
        ),
    ] {
        assert!(base.contains(from), "{from}");
        let text = base
            .replacen("[[resource_type]]", composite, 1)
            .replacen(from, to, 1);
        let env = Env::new();
        for d in ["day1/hr", "day1/app"] {
            std::fs::create_dir_all(env.path(&format!("pipeline/{d}"))).unwrap();
        }
        env.write_pipeline(&text);
        let out = igaflow(&["validate", &env.pipeline()], &[]);
        out.expect_code(2);
        let line = text[..text.find(marker).unwrap()].matches('\n').count() + 1;
        assert!(
            out.stderr.contains(&format!("pipeline.toml:{line}"))
                && out.stderr.contains("`staff` is a composite role")
                && out.stderr.contains("(sales, it)"),
            "{to}: {}",
            out.stderr
        );
    }
}

/// A missing export folder is the environment's state: `validate` warns with its line and the
/// jobs it would stop; a job that synchronizes the connector stops with exit 2 before anything
/// runs; a job that does not read it runs (an incremental day folder holding one connector's
/// change set). Before, every command refused the pipeline.
#[test]
fn a_missing_export_folder_stops_only_the_jobs_that_read_it() {
    let env = Env::new();
    env.write("exports/hr/persons.csv", persons_csv(1..=3));
    let text = hr_pipeline("").replacen(
        "[[entity]]",
        "[connector.app]\nexports = \"../exports/app\"\n\n[[entity]]\nname = \"app_user\"\nconnector = \"app\"\nfile = \"users.csv\"\nkey = \"login\"\ncolumns = { login = \"string\" }\n\n[[entity]]",
        1,
    ) + "\n[[job]]\nname = \"apps\"\n[[job.task]]\nname = \"sync_app\"\ntype = \"synchronize\"\nconnector = \"app\"\nmode = \"complete\"\n";
    env.write_pipeline(&text);
    let line = text[..text.find("exports = \"../exports/app\"").unwrap()]
        .matches('\n')
        .count()
        + 1;

    let out = igaflow(&["validate", &env.pipeline()], &[]);
    out.expect_code(0);
    assert!(
        out.stderr.contains(&format!("pipeline.toml:{line}"))
            && out.stderr.contains("../exports/app")
            && out.stderr.contains("jobs that would stop on it: apps"),
        "{}",
        out.stderr
    );

    let out = env.run("apps", &[], &[]);
    out.expect_code(2);
    assert!(
        out.stderr.contains(&format!("pipeline.toml:{line}"))
            && out
                .stderr
                .contains("export folder `../exports/app` does not exist"),
        "{}",
        out.stderr
    );

    env.run("complete", &[], &[]).expect_code(0);
    assert_eq!(env.scalar("select count(*) from person"), "3");
    assert_eq!(
        env.scalar("select count(*) from runs"),
        "1",
        "the stopped job recorded no run"
    );
}

/// `[notify]` is checked as a run would send: an address that is not one, an empty `to`, a URL
/// of another scheme, and (before, accepted) an smtp URL without a host, each with its line.
#[test]
fn notify_addresses_and_server_url_are_checked() {
    let notify = "[notify]\nto = [\"iam@example.com\"]\nfrom = \"igaflow@example.com\"\nsmtp = \"smtp://mail.example.com:25\"\n\n[connector.hr]";
    let ok = Env::new();
    std::fs::create_dir_all(ok.path("exports/hr")).unwrap();
    ok.write_pipeline(&hr_pipeline("").replacen("[connector.hr]", notify, 1));
    igaflow(&["validate", &ok.pipeline()], &[]).expect_code(0);

    for (from, to, marker, text) in [
        (
            "smtp = \"smtp://mail.example.com:25\"",
            "smtp = \"smtp://\"",
            "smtp = \"smtp://\"",
            "no server host",
        ),
        (
            "smtp = \"smtp://mail.example.com:25\"",
            "smtp = \"http://mail.example.com\"",
            "smtp = \"http:",
            "is not an smtp:// or smtps:// URL",
        ),
        (
            "to = [\"iam@example.com\"]",
            "to = [\"iam at example\"]",
            "[notify]",
            "`iam at example` is not an e-mail address",
        ),
    ] {
        let env = Env::new();
        std::fs::create_dir_all(env.path("exports/hr")).unwrap();
        let pipeline = hr_pipeline("")
            .replacen("[connector.hr]", notify, 1)
            .replacen(from, to, 1);
        env.write_pipeline(&pipeline);
        let out = igaflow(&["validate", &env.pipeline()], &[]);
        out.expect_code(2);
        let line = pipeline[..pipeline.find(marker).unwrap()]
            .matches('\n')
            .count()
            + 1;
        assert!(
            out.stderr.contains(&format!("pipeline.toml:{line}")) && out.stderr.contains(text),
            "{to}: expected line {line} and `{text}` in:\n{}",
            out.stderr
        );
    }
}
