//! `update_entity_property_expressions`: recomputes the computed columns of entity tables
//! (SPEC section 5), e.g. after the configuration changed or when an expression uses
//! `current_date`. Synchronization already computes them for the rows it writes; this task
//! brings every row up to date and rewrites a table only when a value changed. A changed row is
//! a change like any other (SPEC section 4): its open history version is closed and an
//! `update` version opened, and its key is written to `recently_modified`, so that dirty tasks
//! see it.

use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::*;

use super::frames::{Known, NewTable, collect, commit_tables, quoted, session};
use super::role_model::{materialize, union_all};
use super::{RunContext, TaskOutcome, TaskStatus};
use crate::config::Task;
use crate::engine::{self, expr::apply_computed};
use crate::error::Result;

pub async fn run(rc: &RunContext<'_>, task: &Task) -> Result<TaskOutcome> {
    let (ctx, catalog) = session(rc).await?;
    let mut tables = Vec::new();
    let mut parts = Vec::new();
    let mut changed_rows = 0u64;
    let mut modified = Vec::new();
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
        let key = || cast(quoted(&e.key), DataType::Utf8);
        let old = current.clone().select(vec![
            key().alias("_k"),
            engine::row_values_udf()
                .call(computed.clone())
                .alias("_old"),
        ])?;
        // The changed keys, as a synchronization's change set (`_ck`, `_cc`).
        let changes = next
            .clone()
            .select(vec![
                key().alias("_ck"),
                engine::row_values_udf().call(computed).alias("_new"),
            ])?
            .join(old, JoinType::Inner, &["_ck"], &["_k"], None)?
            .filter(col("_old").not_eq(col("_new")))?
            .select(vec![col("_ck"), lit("update").alias("_cc")])?;
        let changes = match materialize(&ctx, changes).await {
            Ok(changes) => changes,
            Err(failed) => {
                let declared: Vec<Expr> = e.columns.iter().map(|c| quoted(&c.name)).collect();
                let declared = current.clone().select(declared)?;
                let file = &rc.pipeline.file;
                return Err(engine::expr::computed_failure(&ctx, file, declared, e, failed).await);
            }
        };
        let changed = changes.clone().count().await? as u64;
        if changed == 0 {
            continue;
        }
        changed_rows += changed;
        parts.push(format!("{}: {changed} row(s)", e.name));
        let (schema, batches) = collect(next.sort(vec![quoted(&e.key).sort(true, true)])?).await?;
        let history_name = format!("{}__history", e.name);
        if catalog.tables.contains_key(&history_name) {
            let history = super::synchronize::next_history(
                &ctx,
                &catalog,
                &history_name,
                &key,
                vec![quoted(&e.key)],
                (&schema, &batches),
                current,
                changes.clone(),
                &rc.run_id,
                rc.started_at.timestamp_micros(),
                None,
            )
            .await?;
            // Mapped rows come only from a first load, which has no history table yet.
            debug_assert!(history.map.is_none());
            tables.push(NewTable {
                name: history_name,
                schema: history.schema,
                batches: history.batches,
                known: Known::Changed,
                patch: None,
            });
        }
        tables.push(NewTable {
            name: e.name.clone(),
            schema,
            batches,
            known: Known::Changed,
            patch: None,
        });
        modified.push(changes.select(vec![
            lit(e.name.as_str()).alias("entity"),
            col("_ck").alias("key"),
            lit(rc.run_id.as_str()).alias("run_id"),
            col("_cc").alias("change"),
        ])?);
    }
    if let Some(modified) = union_all(modified)? {
        let (schema, batches) = collect(modified.sort(vec![
            col("entity").sort(true, true),
            col("key").sort(true, true),
        ])?)
        .await?;
        tables.push(NewTable {
            name: "recently_modified".into(),
            schema,
            batches,
            known: Known::Added,
            patch: None,
        });
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
    let written = commit_tables(
        rc,
        &catalog,
        "task:update_entity_property_expressions",
        tables,
    )
    .await?;
    Ok(TaskOutcome {
        status: TaskStatus::Succeeded,
        rows_read: 0,
        rows_written: written,
        changes: changed_rows,
        message: format!("computed columns changed: {}", parts.join(", ")),
        exit_code: 0,
    })
}
