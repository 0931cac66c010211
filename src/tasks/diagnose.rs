//! Which configuration expression made a task fail, and on which row.
//!
//! An expression of `pipeline.toml` plans (validation checks it against the columns) and may
//! still fail on a value: `CAST(department AS INT)` on `'Sales-1'`. The query engine's error
//! names the value, but neither the expression nor the row, and the task fails as if the engine
//! had. When a task fails in the engine, the expressions it evaluates are evaluated again, each
//! alone over its table; the first that fails is reported as a configuration error (exit 2,
//! SPEC section 2) with its line in `pipeline.toml`, the engine's message and the first row it
//! fails on (as a computed column's failure is, `engine::expr`). Only a failing task pays for
//! this.

use super::RunContext;
use crate::config::{ConfigExpr, Task};
use crate::engine;
use crate::error::{Error, Result};

/// One expression a task evaluates over the rows of `entity`.
struct Evaluated<'a> {
    what: String,
    entity: &'a str,
    expr: &'a ConfigExpr,
}

/// The configuration expressions a task of `task.kind` evaluates, each with its table.
fn expressions<'a>(rc: &'a RunContext<'_>, task: &Task) -> Vec<Evaluated<'a>> {
    let model = &rc.pipeline.model;
    let rts = super::correlation_keys::selected(rc, task);
    let mut found = Vec::new();
    let mut add = |what: String, entity: &'a str, expr: &'a ConfigExpr| {
        found.push(Evaluated { what, entity, expr })
    };
    match task.kind.as_str() {
        "compute_role_model" => {
            for r in &model.roles {
                if let Some(rule) = &r.rule {
                    add(format!("role `{}` rule", r.name), &r.owner, rule);
                }
            }
            for r in &model.composite_roles {
                if let Some(rule) = &r.rule {
                    add(format!("composite role `{}` rule", r.name), &r.owner, rule);
                }
            }
            for rt in rts {
                if let Some(rule) = &rt.rule {
                    add(format!("resource type `{}` rule", rt.name), &rt.owner, rule);
                }
                for (column, e) in &rt.scalars {
                    let what = format!("resource type `{}` scalar `{column}`", rt.name);
                    add(what, &rt.owner, e);
                }
                for l in &rt.links {
                    for v in &l.values {
                        if let Some(rule) = &v.rule {
                            let what = format!(
                                "resource type `{}` link `{}` value `{}` rule",
                                rt.name, l.link, v.target
                            );
                            add(what, &rt.owner, rule);
                        }
                    }
                }
            }
        }
        "compute_correlation_keys" => {
            for rt in rts {
                for c in &rt.correlation {
                    let what = |side: &str| {
                        format!(
                            "resource type `{}` correlation rule {} ({side})",
                            rt.name, c.number
                        )
                    };
                    add(what("target"), &rt.target, &c.target);
                    add(what("owner"), &rt.owner, &c.owner);
                }
            }
        }
        "update_classification" => {
            for c in &model.classifications {
                let what = format!("classification `{}` rule", c.name);
                add(what, &c.target, &c.rule);
            }
        }
        "generate_provisioning_orders" | "update_identities" => {
            for rt in rts {
                for (column, e) in &rt.disable {
                    let what = format!("resource type `{}` disable `{column}`", rt.name);
                    add(what, &rt.owner, e);
                }
                if let Some(l) = &rt.lifecycle {
                    for (name, e) in [("active", &l.active), ("deactivated_by", &l.deactivated_by)]
                    {
                        if let Some(e) = e {
                            let what = format!("resource type `{}` lifecycle `{name}`", rt.name);
                            add(what, &rt.target, e);
                        }
                    }
                }
            }
            if let Some(l) = &model.lifecycle {
                add("lifecycle `state`".into(), &l.owner, &l.state);
                if let Some(e) = &l.anonymization_status {
                    add("lifecycle `anonymization_status`".into(), &l.owner, e);
                }
                for (column, e) in &l.anonymize {
                    add(format!("lifecycle anonymize `{column}`"), &l.owner, e);
                }
            }
        }
        _ => {}
    }
    found
}

/// The configuration error behind a task that failed in the query engine: the first of the
/// task's expressions that fails alone over its table, with the first row, in key order, on
/// which it fails. `None` when every expression evaluates (the failure is elsewhere) or the
/// task evaluates none.
pub async fn failing_expression(rc: &RunContext<'_>, task: &Task) -> Result<Option<Error>> {
    let evaluated = expressions(rc, task);
    if evaluated.is_empty() {
        return Ok(None);
    }
    let (ctx, catalog) = super::frames::session(rc).await?;
    for e in evaluated {
        let Some(entity) = rc.pipeline.entity(e.entity) else {
            continue;
        };
        if !catalog.tables.contains_key(e.entity) {
            continue;
        }
        let table = ctx.table(e.entity).await?;
        // An expression that does not plan over the table alone (it reads columns the task
        // joins in) cannot be evaluated here.
        let evaluated = engine::expr::evaluation_error(&ctx, table.clone(), &e.expr.text).await;
        let Some(Some(failure)) = evaluated else {
            continue;
        };
        let (failure, row) =
            engine::expr::with_first_failing_row(&ctx, &table, entity, &e.expr.text, failure).await;
        return Ok(Some(Error::config(
            &rc.pipeline.file,
            e.expr.line,
            format!(
                "{} `{}` fails on the data of entity `{}`: {}{row}. Fix the expression (for \
                 example with try_cast, or a CASE that leaves such values out) or the data",
                e.what,
                e.expr.text,
                e.entity,
                failure.strip_backtrace()
            ),
        )));
    }
    Ok(None)
}
