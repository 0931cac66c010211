//! Turns the raw file into a [`Pipeline`], collecting every problem with its line.
//!
//! Checks: names (unique, usable as table names; the pipeline's as a folder name), references
//! (connectors, entities, columns, task dependencies), `invoke_sql` files, task types and their
//! parameters (an `update_identities` task needs `[lifecycle]`), threshold percentages,
//! dependency cycles, and every `computed` expression planned against the columns declared
//! before it. A missing export folder is recorded on its connector, not reported: it stops only
//! a job that synchronizes that connector (`Pipeline::missing_exports`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use sha2::{Digest, Sha256};

mod model;

use super::expand::expand_env;
use super::raw::{self, S};
use super::*;
use crate::error::{ConfigProblem, Error};

/// Task types of SPEC section 7, with the parameters each accepts beyond the common ones.
pub const TASK_TYPES: &[(&str, &[&str])] = &[
    ("prepare_synchronization", &["connector", "mode", "force"]),
    ("synchronize", &["connector", "mode", "force"]),
    ("update_entity_property_expressions", &["entities"]),
    ("compute_correlation_keys", &["resource_types"]),
    ("compute_role_model", &["resource_types"]),
    ("update_classification", &["resource_types"]),
    ("save_pre_existing_access_rights", &["resource_types"]),
    ("update_identities", &["resource_types"]),
    ("generate_provisioning_orders", &["connector"]),
    ("set_recently_modified_flag", &[]),
    ("invoke_command", &["command", "timeout", "env"]),
    ("invoke_sql", &["sql", "output", "format"]),
];

/// Tables igaflow owns; entities and links may not take these names.
pub const SYSTEM_TABLES: &[&str] = &[
    "runs",
    "task_runs",
    "recently_modified",
    "rejected_rows",
    "correlation_keys",
    "correlations",
    "assigned_roles",
    "assigned_resources",
    "classification",
    "provisioning_orders",
    "identity_updates",
    "identity_events",
];

struct Ctx<'a> {
    text: &'a str,
    problems: Vec<ConfigProblem>,
}

impl Ctx<'_> {
    fn line<T>(&self, s: &S<T>) -> usize {
        line_of(self.text, s.span().start)
    }
    fn err<T>(&mut self, at: &S<T>, message: impl Into<String>) {
        let line = self.line(at);
        self.problems.push(ConfigProblem {
            line,
            message: message.into(),
        });
    }
    fn err_line(&mut self, line: usize, message: impl Into<String>) {
        self.problems.push(ConfigProblem {
            line,
            message: message.into(),
        });
    }
}

/// A name usable as one folder: no separator, no parent reference, nothing invisible.
fn is_folder_name(s: &str) -> bool {
    !s.contains(['/', '\\']) && !s.contains("..") && s != "." && !s.chars().any(char::is_control)
}

fn is_table_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !s.contains("__")
}

pub(super) fn resolve(
    raw: raw::RawPipeline,
    file: &Path,
    dir: &Path,
    text: &str,
) -> crate::error::Result<Pipeline> {
    let mut cx = Ctx {
        text,
        problems: Vec::new(),
    };

    let name = raw.name.get_ref().clone();
    if name.trim().is_empty() {
        cx.err(
            &raw.name,
            "`name` is empty: give the pipeline a name, e.g. name = \"contoso\"",
        );
    } else if !is_folder_name(&name) {
        // The default store is `var/<name>`: a path in the name would put it elsewhere.
        cx.err(
            &raw.name,
            format!(
                "name = \"{}\": the pipeline name is used as a folder name (var/<name>); it may not contain `/`, `\\`, `..` or control characters",
                name.escape_debug()
            ),
        );
    }

    let store_uri = match raw.store.as_ref().and_then(|s| s.uri.as_ref()) {
        Some(uri) => match expand_env(uri.get_ref()) {
            Ok(v) => Some(v),
            Err(m) => {
                cx.err(uri, format!("[store] uri: {m}"));
                None
            }
        },
        None => None,
    };
    let deletion_vectors = raw
        .store
        .as_ref()
        .and_then(|s| s.deletion_vectors.as_ref())
        .is_some_and(|d| *d.get_ref());
    let orders_dir = raw
        .output
        .as_ref()
        .and_then(|o| o.orders.as_ref())
        .map(|o| o.get_ref().clone());

    let resolve_path = |p: &str| -> PathBuf {
        let path = Path::new(p);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            dir.join(path)
        }
    };

    // Connectors.
    let mut connectors = IndexMap::new();
    for (cname, c) in &raw.connector {
        if !is_table_name(cname) {
            cx.err(
                c,
                format!(
                    "connector name `{cname}`: use lowercase letters, digits and single underscores"
                ),
            );
        }
        // A missing export folder is the environment's state, not the configuration's: it
        // fails only a job that reads the connector's files (`Pipeline::missing_exports`).
        let mut exports_missing = None;
        let exports = match expand_env(c.get_ref().exports.get_ref()) {
            Ok(v) => {
                let exports = resolve_path(&v);
                if !exports.is_dir() {
                    exports_missing = Some(ConfigProblem {
                        line: cx.line(&c.get_ref().exports),
                        message: format!(
                            "connector `{cname}`: export folder `{}` does not exist (resolved to {}); create it or fix `exports`",
                            c.get_ref().exports.get_ref(),
                            exports.display()
                        ),
                    });
                }
                exports
            }
            Err(m) => {
                cx.err(&c.get_ref().exports, format!("connector `{cname}`: {m}"));
                // Still declared: what names it is not reported unknown as well.
                resolve_path(c.get_ref().exports.get_ref())
            }
        };
        connectors.insert(
            cname.clone(),
            Connector {
                name: cname.clone(),
                exports,
                exports_missing,
                update: c.get_ref().update,
            },
        );
    }

    let mut table_names: HashSet<String> = HashSet::new();
    let mut check_table_name = |cx: &mut Ctx, at: &S<String>, what: &str| {
        let n = at.get_ref();
        if !is_table_name(n) {
            cx.err(
                at,
                format!("{what} name `{n}`: use lowercase letters, digits and single underscores (it becomes a table name)"),
            );
        } else if SYSTEM_TABLES.contains(&n.as_str()) {
            cx.err(
                at,
                format!("{what} name `{n}` is the name of a table igaflow writes; choose another"),
            );
        } else if !table_names.insert(n.clone()) {
            cx.err(
                at,
                format!(
                    "{what} name `{n}` is used twice (entity and link names share one namespace)"
                ),
            );
        }
    };

    // Entities.
    let mut entities = Vec::new();
    for e in &raw.entity {
        let line = cx.line(e);
        let r = e.get_ref();
        check_table_name(&mut cx, &r.name, "entity");
        if !connectors.contains_key(r.connector.get_ref()) {
            cx.err(
                &r.connector,
                format!(
                    "entity `{}`: unknown connector `{}` (declared: {})",
                    r.name.get_ref(),
                    r.connector.get_ref(),
                    join_names(connectors.keys())
                ),
            );
        }
        let mut columns = Vec::new();
        for (cname, ty) in &r.columns {
            if cname.starts_with('_') {
                cx.err(
                    ty,
                    format!(
                        "entity `{}`: column `{cname}`: names starting with `_` are reserved",
                        r.name.get_ref()
                    ),
                );
            }
            match ColumnType::parse(ty.get_ref()) {
                Some(t) => columns.push(Column {
                    name: cname.clone(),
                    ty: t,
                }),
                None => cx.err(
                    ty,
                    format!(
                        "entity `{}`: column `{cname}` has unknown type `{}` (use string, int, float, bool, date or timestamp)",
                        r.name.get_ref(),
                        ty.get_ref()
                    ),
                ),
            }
        }
        if !r.columns.contains_key(r.key.get_ref()) {
            cx.err(
                &r.key,
                format!(
                    "entity `{}`: key `{}` is not a declared column (declared: {})",
                    r.name.get_ref(),
                    r.key.get_ref(),
                    join_names(r.columns.keys())
                ),
            );
        }
        let mut computed = Vec::new();
        for (cname, expr) in &r.computed {
            if r.columns.contains_key(cname) {
                cx.err(
                    expr,
                    format!(
                        "entity `{}`: computed column `{cname}` is also a declared column",
                        r.name.get_ref()
                    ),
                );
            }
            computed.push(Computed {
                name: cname.clone(),
                expr: expr.get_ref().clone(),
                line: cx.line(expr),
            });
        }
        let csv = resolve_csv(&mut cx, &r.csv);
        let thresholds = resolve_thresholds(
            &mut cx,
            &r.thresholds,
            &format!("entity `{}`", r.name.get_ref()),
        );
        entities.push(Entity {
            name: r.name.get_ref().clone(),
            connector: r.connector.get_ref().clone(),
            file: r.file.get_ref().clone(),
            key: r.key.get_ref().clone(),
            csv,
            thresholds,
            columns,
            computed,
            line,
        });
    }

    // Computed expressions, planned against the declared columns and the ones before them.
    for e in &entities {
        if e.columns.len() != raw_columns_len(&raw, &e.name) {
            continue; // a bad type was reported already; planning would only add noise
        }
        for (line, message) in crate::engine::expr::check_computed(e) {
            cx.err_line(line, message);
        }
    }

    // Links.
    let mut links = Vec::new();
    for l in &raw.link {
        let line = cx.line(l);
        let r = l.get_ref();
        check_table_name(&mut cx, &r.name, "link");
        if !connectors.contains_key(r.connector.get_ref()) {
            cx.err(
                &r.connector,
                format!(
                    "link `{}`: unknown connector `{}` (declared: {})",
                    r.name.get_ref(),
                    r.connector.get_ref(),
                    join_names(connectors.keys())
                ),
            );
        }
        let endpoint = |cx: &mut Ctx, ep: &S<raw::RawEndpoint>, side: &str| -> Endpoint {
            let ep = ep.get_ref();
            if !entities.iter().any(|e| &e.name == ep.entity.get_ref()) {
                cx.err(
                    &ep.entity,
                    format!(
                        "link `{}`: `{side}` names unknown entity `{}` (declared: {})",
                        r.name.get_ref(),
                        ep.entity.get_ref(),
                        join_names(entities.iter().map(|e| &e.name))
                    ),
                );
            }
            if ep.column.get_ref().is_empty() || ep.column.get_ref().starts_with('_') {
                cx.err(
                    &ep.column,
                    format!(
                        "link `{}`: `{side}.column` must name a CSV column",
                        r.name.get_ref()
                    ),
                );
            }
            if let Some(s) = &ep.separator
                && s.get_ref().is_empty()
            {
                cx.err(
                    s,
                    format!("link `{}`: `{side}.separator` is empty", r.name.get_ref()),
                );
            }
            Endpoint {
                entity: ep.entity.get_ref().clone(),
                column: ep.column.get_ref().clone(),
                separator: ep.separator.as_ref().map(|s| s.get_ref().clone()),
            }
        };
        let from = endpoint(&mut cx, &r.from, "from");
        let to = endpoint(&mut cx, &r.to, "to");
        if from.column == to.column {
            cx.err(
                &r.to,
                format!(
                    "link `{}`: `from.column` and `to.column` are both `{}`",
                    r.name.get_ref(),
                    from.column
                ),
            );
        }
        let csv = resolve_csv(&mut cx, &r.csv);
        links.push(Link {
            name: r.name.get_ref().clone(),
            connector: r.connector.get_ref().clone(),
            file: r.file.get_ref().clone(),
            from,
            to,
            csv,
            thresholds: resolve_thresholds(
                &mut cx,
                &r.thresholds,
                &format!("link `{}`", r.name.get_ref()),
            ),
            line,
        });
    }

    // Jobs.
    let mut jobs = Vec::new();
    let mut job_names = HashSet::new();
    for j in &raw.job {
        let r = j.get_ref();
        if !job_names.insert(r.name.get_ref().clone()) {
            cx.err(
                &r.name,
                format!("job `{}` is declared twice", r.name.get_ref()),
            );
        }
        if let Some(i) = &r.interval
            && parse_duration(i.get_ref()).is_none()
        {
            cx.err(
                i,
                format!(
                    "job `{}`: interval = \"{}\" is not a duration (e.g. \"600s\", \"10m\")",
                    r.name.get_ref(),
                    i.get_ref()
                ),
            );
        }
        if let Some(c) = &r.schedule
            && let Err(e) = <croner::Cron as std::str::FromStr>::from_str(c.get_ref())
        {
            cx.err(
                c,
                format!(
                    "job `{}`: schedule = \"{}\" is not a cron expression ({e}); e.g. \"0 2 * * *\" (02:00 UTC daily)",
                    r.name.get_ref(),
                    c.get_ref()
                ),
            );
        }
        if r.schedule.is_some() && r.interval.is_some() {
            cx.err(
                j,
                format!(
                    "job `{}`: give either `schedule` or `interval`, not both",
                    r.name.get_ref()
                ),
            );
        }
        let mut tasks = Vec::new();
        let mut task_names: HashSet<String> = HashSet::new();
        let mut duplicate_names = false;
        let mut prev: Option<String> = None;
        for t in &r.task {
            let task = resolve_task(
                &mut cx,
                t,
                r.name.get_ref(),
                &prev,
                &connectors,
                &entities,
                &resolve_path,
            );
            if !task_names.insert(task.name.clone()) {
                duplicate_names = true;
                cx.err(
                    &t.get_ref().name,
                    format!(
                        "job `{}`: task name `{}` is used twice",
                        r.name.get_ref(),
                        task.name
                    ),
                );
            }
            prev = Some(task.name.clone());
            tasks.push(task);
        }
        // Dependencies name tasks of the same job; the graph has no cycle.
        for (t, raw_t) in tasks.iter().zip(&r.task) {
            for d in &t.depends_on {
                if !task_names.contains(d) {
                    let at = raw_t
                        .get_ref()
                        .depends_on
                        .as_ref()
                        .map(|s| cx.line(s))
                        .unwrap_or(t.line);
                    cx.err_line(
                        at,
                        format!(
                            "job `{}`: task `{}` depends on unknown task `{d}`",
                            r.name.get_ref(),
                            t.name
                        ),
                    );
                }
            }
        }
        // With a task name used twice the graph is not well defined (a task seems to depend on
        // itself): that error alone is reported.
        if let Some(cycle) = find_cycle(&tasks).filter(|_| !duplicate_names) {
            let line = tasks
                .iter()
                .find(|t| t.name == cycle[0])
                .map(|t| t.line)
                .unwrap_or(cx.line(j));
            cx.err_line(
                line,
                format!(
                    "job `{}`: dependency cycle: {}",
                    r.name.get_ref(),
                    cycle.join(" → ")
                ),
            );
        }
        jobs.push(Job {
            name: r.name.get_ref().clone(),
            schedule: r.schedule.as_ref().map(|s| s.get_ref().clone()),
            interval: r.interval.as_ref().map(|s| s.get_ref().clone()),
            concurrent: r.concurrent,
            tasks,
            line: cx.line(j),
        });
    }

    let broken: HashSet<String> = entities
        .iter()
        .filter(|e| e.columns.len() != raw_columns_len(&raw, &e.name))
        .map(|e| e.name.clone())
        .collect();
    let model = model::resolve_model(
        &mut cx,
        model::ModelInput {
            raw: &raw,
            entities: &entities,
            links: &links,
            broken,
            resolve_path: &resolve_path,
        },
    );

    // A task's `resource_types` name declared resource types (a misspelt one would make the
    // task silently work on nothing).
    for j in &raw.job {
        for t in &j.get_ref().task {
            let t = t.get_ref();
            let Some(names) = &t.resource_types else {
                continue;
            };
            for n in names.get_ref() {
                if !model.resource_types.iter().any(|rt| &rt.name == n) {
                    cx.err(
                        names,
                        format!(
                            "job `{}`, task `{}`: unknown resource type `{n}` in `resource_types` (declared: {})",
                            j.get_ref().name.get_ref(),
                            t.name.get_ref(),
                            join_names(model.resource_types.iter().map(|rt| &rt.name))
                        ),
                    );
                }
            }
        }
    }

    // `update_identities` reads the owners' states from `[lifecycle]`.
    if raw.lifecycle.is_none() {
        for j in &jobs {
            for t in j.tasks.iter().filter(|t| t.kind == "update_identities") {
                cx.err_line(
                    t.line,
                    format!(
                        "job `{}`, task `{}`: `update_identities` needs a [lifecycle] section (owner, state…) in pipeline.toml",
                        j.name, t.name
                    ),
                );
            }
        }
    }

    let notify = raw.notify.as_ref().map(|n| {
        let r = n.get_ref();
        for a in r.to.iter().chain(std::iter::once(r.from.get_ref())) {
            if a.parse::<lettre::Address>().is_err()
                && a.parse::<lettre::message::Mailbox>().is_err()
            {
                cx.err(n, format!("[notify]: `{a}` is not an e-mail address"));
            }
        }
        if r.to.is_empty() {
            cx.err(n, "[notify]: `to` is empty; list at least one address");
        }
        if let Some(u) = &r.smtp {
            if !(u.get_ref().starts_with("smtp://") || u.get_ref().starts_with("smtps://")) {
                cx.err(
                    u,
                    format!(
                        "[notify]: smtp = \"{}\" is not an smtp:// or smtps:// URL",
                        u.get_ref()
                    ),
                );
            } else if let Err(m) = crate::notify::check_url(u.get_ref()) {
                // The URL the run would send through, parsed as the run parses it.
                cx.err(u, format!("[notify]: smtp = \"{}\": {m}", u.get_ref()));
            }
        }
        Notify {
            to: r.to.clone(),
            from: r.from.get_ref().clone(),
            smtp: r.smtp.as_ref().map(|s| s.get_ref().clone()),
        }
    });

    if !cx.problems.is_empty() {
        cx.problems.sort_by_key(|p| p.line);
        return Err(Error::Config {
            file: file.to_path_buf(),
            problems: cx.problems,
        });
    }

    let hash = Sha256::digest(text.as_bytes());
    Ok(Pipeline {
        name,
        dir: dir.to_path_buf(),
        file: file.to_path_buf(),
        config_hash: hex::encode(&hash[..8]),
        store_uri,
        deletion_vectors,
        orders_dir,
        connectors,
        entities,
        links,
        jobs,
        model,
        notify,
    })
}

fn raw_columns_len(raw: &raw::RawPipeline, entity: &str) -> usize {
    raw.entity
        .iter()
        .find(|e| e.get_ref().name.get_ref() == entity)
        .map(|e| e.get_ref().columns.len())
        .unwrap_or(0)
}

fn join_names<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = names.map(String::as_str).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn resolve_csv(cx: &mut Ctx, r: &raw::RawCsv) -> CsvOptions {
    let mut csv = CsvOptions::default();
    if let Some(d) = &r.delimiter {
        match d.get_ref().as_bytes() {
            [b] if b.is_ascii() && *b != b'"' && *b != b'\n' && *b != b'\r' => csv.delimiter = *b,
            _ => cx.err(
                d,
                format!(
                    "csv.delimiter `{}` must be one ASCII character other than a quote or newline",
                    d.get_ref()
                ),
            ),
        }
    }
    if let Some(o) = &r.on_bad_row {
        match o.get_ref().as_str() {
            "fail" => csv.on_bad_row = OnBadRow::Fail,
            "quarantine" => csv.on_bad_row = OnBadRow::Quarantine,
            other => cx.err(
                o,
                format!("csv.on_bad_row `{other}`: use \"fail\" or \"quarantine\""),
            ),
        }
    }
    if let Some(c) = &r.command_column {
        csv.command_column = c.get_ref().clone();
    }
    csv
}

fn resolve_thresholds(cx: &mut Ctx, r: &raw::RawThresholds, what: &str) -> Thresholds {
    let d = Thresholds::default();
    Thresholds {
        min_rows: r.min_rows.unwrap_or(d.min_rows),
        max_deleted_percent: percent(cx, &r.max_deleted_percent, "max_deleted_percent", what)
            .unwrap_or(d.max_deleted_percent),
        max_deleted: r.max_deleted,
        max_inserted_percent: percent(cx, &r.max_inserted_percent, "max_inserted_percent", what),
        max_inserted: r.max_inserted,
        max_updated_percent: percent(cx, &r.max_updated_percent, "max_updated_percent", what),
        max_updated: r.max_updated,
    }
}

/// A threshold percentage, which must lie between 0 and 100: a negative one would block every
/// change, one above 100 none. (Counts are unsigned: serde rejects a negative one at its line.)
fn percent(cx: &mut Ctx, v: &Option<S<f64>>, key: &str, what: &str) -> Option<f64> {
    let v = v.as_ref()?;
    let p = *v.get_ref();
    if !(0.0..=100.0).contains(&p) {
        cx.err(
            v,
            format!("{what}: {key} = {p}: use a percentage between 0 and 100"),
        );
    }
    Some(p)
}

#[allow(clippy::too_many_arguments)]
fn resolve_task(
    cx: &mut Ctx,
    t: &S<raw::RawTask>,
    job: &str,
    prev: &Option<String>,
    connectors: &IndexMap<String, Connector>,
    entities: &[Entity],
    resolve_path: &dyn Fn(&str) -> PathBuf,
) -> Task {
    let r = t.get_ref();
    let line = cx.line(t);
    let name = r.name.get_ref().clone();
    let kind = r.kind.get_ref().clone();
    let allowed: &[&str] = match TASK_TYPES.iter().find(|(k, _)| *k == kind) {
        Some((_, params)) => params,
        None => {
            cx.err(
                &r.kind,
                format!(
                    "job `{job}`, task `{name}`: unknown task type `{kind}` (known: {})",
                    TASK_TYPES
                        .iter()
                        .map(|(k, _)| *k)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
            &[]
        }
    };
    let known = TASK_TYPES.iter().any(|(k, _)| *k == kind);
    let present: [(&str, Option<usize>); 11] = [
        ("connector", r.connector.as_ref().map(|s| cx.line(s))),
        ("mode", r.mode.as_ref().map(|s| cx.line(s))),
        ("force", r.force.as_ref().map(|s| cx.line(s))),
        ("entities", r.entities.as_ref().map(|s| cx.line(s))),
        (
            "resource_types",
            r.resource_types.as_ref().map(|s| cx.line(s)),
        ),
        ("command", r.command.as_ref().map(|s| cx.line(s))),
        ("timeout", r.timeout.as_ref().map(|s| cx.line(s))),
        ("env", r.env.as_ref().map(|s| cx.line(s))),
        ("sql", r.sql.as_ref().map(|s| cx.line(s))),
        ("output", r.output.as_ref().map(|s| cx.line(s))),
        ("format", r.format.as_ref().map(|s| cx.line(s))),
    ];
    if known {
        for (param, at) in present {
            if let Some(l) = at
                && !allowed.contains(&param)
            {
                cx.err_line(
                    l,
                    format!(
                        "job `{job}`, task `{name}`: `{param}` is not a parameter of `{kind}` (it takes: {})",
                        if allowed.is_empty() { "no parameters".to_string() } else { allowed.join(", ") }
                    ),
                );
            }
        }
    }
    let needs_connector = matches!(kind.as_str(), "prepare_synchronization" | "synchronize");
    if let Some(c) = &r.connector {
        if !connectors.contains_key(c.get_ref()) {
            cx.err(
                c,
                format!(
                    "job `{job}`, task `{name}`: unknown connector `{}`",
                    c.get_ref()
                ),
            );
        }
    } else if needs_connector {
        cx.err(
            t,
            format!("job `{job}`, task `{name}`: `{kind}` needs `connector = \"…\"`"),
        );
    }
    let mode = match r.mode.as_ref().map(|m| m.get_ref().as_str()) {
        None | Some("complete") => SyncMode::Complete,
        Some("incremental") => SyncMode::Incremental,
        Some("initial") => SyncMode::Initial,
        Some(other) => {
            cx.err(r.mode.as_ref().expect("checked"), format!("job `{job}`, task `{name}`: mode `{other}`: use complete, incremental or initial"));
            SyncMode::Complete
        }
    };
    if let Some(es) = &r.entities {
        for e in es.get_ref() {
            if !entities.iter().any(|x| &x.name == e) {
                cx.err(
                    es,
                    format!("job `{job}`, task `{name}`: unknown entity `{e}`"),
                );
            }
        }
    }
    if let Some(t) = &r.timeout
        && parse_duration(t.get_ref()).is_none()
    {
        cx.err(
            t,
            format!(
                "job `{job}`, task `{name}`: timeout = \"{}\" is not a duration (e.g. \"30s\", \"10m\", \"2h\")",
                t.get_ref()
            ),
        );
    }
    if kind == "invoke_command" && r.command.as_ref().is_none_or(|c| c.get_ref().is_empty()) {
        cx.err(t, format!("job `{job}`, task `{name}`: `invoke_command` needs `command = [\"program\", \"arg\", …]`"));
    }
    if kind == "invoke_sql" {
        if r.sql.is_none() {
            cx.err(
                t,
                format!("job `{job}`, task `{name}`: `invoke_sql` needs `sql = \"file.sql\"`"),
            );
        }
        if r.output.is_none() {
            cx.err(
                t,
                format!("job `{job}`, task `{name}`: `invoke_sql` needs `output = \"path\"`"),
            );
        }
        // Caught here, so that a run stops before its first task rather than at this one.
        if let Some(s) = &r.sql {
            let path = resolve_path(s.get_ref());
            if !path.is_file() {
                cx.err(
                    s,
                    format!(
                        "job `{job}`, task `{name}`: sql file `{}` not found (resolved to {})",
                        s.get_ref(),
                        path.display()
                    ),
                );
            }
        }
    }
    if let Some(f) = &r.format
        && !matches!(f.get_ref().as_str(), "csv" | "parquet")
    {
        cx.err(
            f,
            format!(
                "job `{job}`, task `{name}`: format `{}`: use csv or parquet",
                f.get_ref()
            ),
        );
    }
    let run_if_changed = match r.run_if.as_ref().map(|s| s.get_ref().as_str()) {
        None | Some("always") => false,
        Some("changed") => true,
        Some(other) => {
            cx.err(
                r.run_if.as_ref().expect("checked"),
                format!(
                    "job `{job}`, task `{name}`: run_if `{other}`: use \"changed\" or \"always\""
                ),
            );
            false
        }
    };
    let depends_on = match &r.depends_on {
        Some(d) => d.get_ref().clone(),
        None => prev.iter().cloned().collect(),
    };
    Task {
        name,
        kind,
        depends_on,
        continue_on_error: r.continue_on_error,
        run_if_changed,
        dirty: r.dirty,
        connector: r.connector.as_ref().map(|s| s.get_ref().clone()),
        mode,
        force: r.force.as_ref().map(|s| *s.get_ref()).unwrap_or(false),
        entities: r.entities.as_ref().map(|s| s.get_ref().clone()),
        resource_types: r.resource_types.as_ref().map(|s| s.get_ref().clone()),
        command: r
            .command
            .as_ref()
            .map(|s| s.get_ref().clone())
            .unwrap_or_default(),
        timeout: r.timeout.as_ref().map(|s| s.get_ref().clone()),
        env: r
            .env
            .as_ref()
            .map(|s| s.get_ref().clone())
            .unwrap_or_default(),
        sql: r.sql.as_ref().map(|s| resolve_path(s.get_ref())),
        output: r.output.as_ref().map(|s| resolve_path(s.get_ref())),
        format: r.format.as_ref().map(|s| s.get_ref().clone()),
        line,
    }
}

/// A dependency cycle as task names, first repeated at the end, if the graph has one.
fn find_cycle(tasks: &[Task]) -> Option<Vec<String>> {
    let index: HashMap<&str, usize> = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    // 0 = unvisited, 1 = on the stack, 2 = done
    let mut state = vec![0u8; tasks.len()];
    let mut stack: Vec<usize> = Vec::new();
    fn visit(
        i: usize,
        tasks: &[Task],
        index: &HashMap<&str, usize>,
        state: &mut [u8],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<String>> {
        state[i] = 1;
        stack.push(i);
        for d in &tasks[i].depends_on {
            let Some(&j) = index.get(d.as_str()) else {
                continue;
            };
            if state[j] == 1 {
                let pos = stack
                    .iter()
                    .position(|&k| k == j)
                    .expect("invariant: on stack");
                let mut cycle: Vec<String> = stack[pos..]
                    .iter()
                    .map(|&k| tasks[k].name.clone())
                    .collect();
                cycle.push(tasks[j].name.clone());
                return Some(cycle);
            }
            if state[j] == 0
                && let Some(c) = visit(j, tasks, index, state, stack)
            {
                return Some(c);
            }
        }
        stack.pop();
        state[i] = 2;
        None
    }
    for i in 0..tasks.len() {
        if state[i] == 0
            && let Some(c) = visit(i, tasks, &index, &mut state, &mut stack)
        {
            return Some(c);
        }
    }
    None
}
