//! `compute_correlation_keys`: every correlation rule's value on both sides, as one long table.
//!
//! `correlation_keys` (`resource_type`, `side` = owner|target, `entity`, `key`, `rule`, `value`)
//! holds, for each resource type and rule (numbered from 1), the rule's expression evaluated over
//! the whole owner table and the whole target table. NULL and empty values are not keys
//! (SPEC 11.3). Correlation then is a join of this table with itself. The table is stored in
//! (`resource_type`, `side`, `rule`, `key`) order: each part is read in the order its
//! synchronized table is stored (by key), so a complete run sorts nothing unless a part is out
//! of that order (`engine::collect_ordered_by`), and a dirty run splices its recomputed rows in.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::error::DataFusionError;
use datafusion::prelude::*;

use super::frames::{NewTable, Replacement, commit_tables_counted, quoted, require, session};
use super::{RunContext, TaskOutcome, TaskStatus};
use crate::config::{ResourceType, Task};
use crate::engine;
use crate::error::{Error, Result};

pub const TABLE: &str = "correlation_keys";

pub async fn run(rc: &RunContext<'_>, task: &Task) -> Result<TaskOutcome> {
    let mut phases = super::Phases::new("correlation_keys");
    let (ctx, catalog) = session(rc).await?;
    // A task limited to some resource types computes them whole (not dirty) and keeps the
    // others' committed keys as they are.
    let rts = selected(rc, task);
    let subset = rts.len() < rc.pipeline.model.resource_types.len();
    let scope = match subset {
        true => None,
        false => super::dirty::scope(rc, &ctx, &catalog, task).await?,
    };
    // The parts in the table's order: by resource type, side and rule.
    let mut rts = rts;
    rts.sort_by(|a, b| a.name.cmp(&b.name));
    let mut parts = Vec::new();
    for &rt in &rts {
        parts.extend(keys_of(rc, &ctx, &catalog, rt, scope.as_ref()).await?);
    }
    let columns: Vec<Expr> = ["resource_type", "side", "entity", "key", "rule", "value"]
        .iter()
        .map(|c| col(*c))
        .collect();
    let parts = parts
        .into_iter()
        .map(|df| df.select(columns.clone()))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut all: Option<DataFrame> = None;
    for df in &parts {
        all = Some(match all {
            None => df.clone(),
            Some(a) => a.union(df.clone())?,
        });
    }
    let Some(mut all) = all else {
        return Ok(TaskOutcome::skipped(
            "no resource type has correlation rules",
        ));
    };
    // (resource type, side, rule, key) is unique: an entity's row has one value per rule.
    let order = ["resource_type", "side", "rule", "key"];
    if subset && catalog.tables.contains_key(TABLE) {
        let names: Vec<Expr> = rts.iter().map(|rt| lit(rt.name.as_str())).collect();
        all = all.union(
            ctx.table(TABLE)
                .await?
                .filter(col("resource_type").in_list(names, true))?
                .select(columns.clone())?,
        )?;
    }
    // Dirty: the recomputed keys replace those of the same rows; the others stay (read in
    // their stored order, which is the table's order).
    let table = match &scope {
        Some(scope) if catalog.tables.contains_key(TABLE) => {
            let replacement = Replacement {
                old: ctx.table(TABLE).await?.select(columns)?,
                keys: scope.owners.clone().union(scope.accounts.clone())?,
                on: vec!["entity", "key"],
                new: all,
                differs: false,
            };
            NewTable::replaced(rc, &catalog, &ctx, TABLE, replacement, &order, false).await?
        }
        _ if subset => {
            let order = order.iter().map(|c| col(*c).sort(true, true)).collect();
            NewTable::from_frame(TABLE, all.sort(order)?).await?
        }
        // Whole: each part is a projection of a synchronized table, stored in key order, so
        // the parts one after the other are in the table's order as they are read; a part
        // that is not (an entity keyed by a number, whose text sorts otherwise) is sorted.
        _ => {
            let schema = Arc::new(all.schema().as_arrow().clone());
            // Each part on its own task, so that both cores read (each part's plan runs on
            // one partition, to keep its order).
            let read = parts.into_iter().map(|df| {
                let ctx = ctx.clone();
                tokio::spawn(async move { engine::collect_ordered_by(&ctx, df, "key").await })
            });
            let mut batches = Vec::new();
            for part in futures::future::try_join_all(read)
                .await
                .map_err(|e| Error::Engine(DataFusionError::External(Box::new(e))))?
            {
                batches.extend(engine::align(&part?.1, &schema)?);
            }
            NewTable {
                name: TABLE.into(),
                schema,
                batches,
                known: Default::default(),
                patch: None,
            }
        }
    };
    phases.done("keys");
    let rows = table.rows();
    let committed_now =
        commit_tables_counted(rc, &catalog, "task:compute_correlation_keys", vec![table]).await?;
    phases.done("commit");
    let written = committed_now.rows;
    Ok(TaskOutcome {
        status: if committed_now.tables == 0 && !rc.dry_run {
            TaskStatus::NoChanges
        } else {
            TaskStatus::Succeeded
        },
        rows_read: 0,
        rows_written: written,
        changes: rows,
        message: format!("{rows} correlation keys"),
        exit_code: 0,
    })
}

/// The resource types a task works on (`resource_types`, default all).
pub fn selected<'a>(rc: &'a RunContext<'_>, task: &Task) -> Vec<&'a ResourceType> {
    rc.pipeline
        .model
        .resource_types
        .iter()
        .filter(|rt| {
            task.resource_types
                .as_ref()
                .is_none_or(|v| v.contains(&rt.name))
        })
        .collect()
}

/// One frame per rule and side: `resource_type, side, entity, key, rule, value`.
async fn keys_of(
    rc: &RunContext<'_>,
    ctx: &SessionContext,
    catalog: &crate::store::Catalog,
    rt: &ResourceType,
    scope: Option<&super::dirty::Scope>,
) -> Result<Vec<DataFrame>> {
    let mut out = Vec::new();
    for (side, entity_name) in [("owner", &rt.owner), ("target", &rt.target)] {
        let entity = rc
            .pipeline
            .entity(entity_name)
            .expect("invariant: validated");
        let mut table = require(ctx, catalog, entity_name, "synchronize").await?;
        if let Some(scope) = scope {
            let keys = if side == "owner" {
                &scope.owners
            } else {
                &scope.accounts
            };
            table = super::dirty::restrict(table, quoted(&entity.key), entity_name, keys)?;
        }
        for rule in &rt.correlation {
            let text = if side == "owner" {
                &rule.owner.text
            } else {
                &rule.target.text
            };
            let value = ctx.parse_sql_expr(text, table.schema())?;
            let df = table
                .clone()
                .select(vec![
                    lit(rt.name.as_str()).alias("resource_type"),
                    lit(side).alias("side"),
                    lit(entity_name.as_str()).alias("entity"),
                    cast(quoted(&entity.key), DataType::Utf8).alias("key"),
                    lit(rule.number).alias("rule"),
                    cast(value, DataType::Utf8).alias("value"),
                ])?
                .filter(col("value").is_not_null().and(col("value").not_eq(lit(""))))?;
            out.push(df);
        }
    }
    Ok(out)
}
