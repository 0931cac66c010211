//! `update_entity_property_expressions`: recomputes the computed columns of entity tables
//! (SPEC section 5), e.g. after the configuration changed or when an expression uses
//! `current_date`. Synchronization already computes them for the rows it writes; this task
//! brings every row up to date and rewrites a table only when a value changed.

use datafusion::prelude::*;

use super::frames::{NewTable, commit_tables, quoted, session};
use super::{RunContext, TaskOutcome, TaskStatus};
use crate::config::Task;
use crate::engine::{self, expr::apply_computed};
use crate::error::Result;

pub async fn run(rc: &RunContext<'_>, task: &Task) -> Result<TaskOutcome> {
    let (ctx, catalog) = session(rc).await?;
    let mut tables = Vec::new();
    let mut parts = Vec::new();
    let mut changed_rows = 0u64;
    for e in &rc.pipeline.entities {
        if e.computed.is_empty()
            || !catalog.tables.contains_key(&e.name)
            || task.entities.as_ref().is_some_and(|v| !v.contains(&e.name))
        {
            continue;
        }
        let current = ctx.table(e.name.as_str()).await?;
        let declared: Vec<Expr> = e.columns.iter().map(|c| quoted(&c.name)).collect();
        let next = apply_computed(&ctx, current.clone().select(declared)?, e)?;
        let computed: Vec<Expr> = e.computed.iter().map(|c| quoted(&c.name)).collect();
        let key = quoted(&e.key);
        let old = current.select(vec![
            key.clone().alias("_k"),
            engine::row_values_udf()
                .call(computed.clone())
                .alias("_old"),
        ])?;
        let changed = next
            .clone()
            .select(vec![
                key.clone().alias("_k2"),
                engine::row_values_udf().call(computed).alias("_new"),
            ])?
            .join(old, JoinType::Inner, &["_k2"], &["_k"], None)?
            .filter(col("_old").not_eq(col("_new")))?
            .count()
            .await? as u64;
        if changed > 0 {
            changed_rows += changed;
            parts.push(format!("{}: {changed} row(s)", e.name));
            tables
                .push(NewTable::from_frame(&e.name, next.sort(vec![key.sort(true, true)])?).await?);
        }
    }
    if tables.is_empty() {
        return Ok(TaskOutcome {
            status: TaskStatus::NoChanges,
            rows_read: 0,
            rows_written: 0,
            changes: 0,
            message: "computed columns are up to date".into(),
            exit_code: 0,
        });
    }
    let written = commit_tables(rc, "task:update_entity_property_expressions", tables).await?;
    Ok(TaskOutcome {
        status: TaskStatus::Succeeded,
        rows_read: 0,
        rows_written: written,
        changes: changed_rows,
        message: format!("computed columns changed: {}", parts.join(", ")),
        exit_code: 0,
    })
}
