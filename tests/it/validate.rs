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
        "missing export folder",
        "exports = \"../exports/hr\"",
        "exports = \"../exports/nowhere\"",
        "exports = \"../exports/nowhere\"",
        "nowhere",
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
