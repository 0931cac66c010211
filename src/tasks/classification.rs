//! `update_classification`: what each account of a target entity is (SPEC section 5).
//!
//! `classification` (`entity`, `account_key`, `class`, `protect`): a linked account gets its
//! resource type's name; any other the first classification rule in file order that holds
//! (service, admin…), else `orphan`. Accounts of a class with `protect = true` never get orders.

use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::arrow::array::{BooleanArray, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::prelude::*;

use super::frames::{
    Known, NewTable, Replacement, commit_tables_counted, frame, quoted, require, session,
};
use super::role_model::{empty, rule_hits, union_all, view};
use super::{RunContext, TaskOutcome, TaskStatus};
use crate::config::{ConfigExpr, Task};
use crate::error::{Error, Result};

const TABLE: &str = "classification";
const CLASSIFICATION_SQL: &str = include_str!("../../sql/classification.sql");
/// Each linked account's first resource type in file order: the class it gets. Found by min()
/// over the file order, then named by a join (a row_number() window per account sorts them all).
const FIRST_TYPE_SQL: &str = "
    SELECT f.account_key, o._rt AS resource_type
    FROM (SELECT account_key, min(rt_order) AS first_order FROM cls_linked GROUP BY account_key) f
    JOIN cls_rt_order o ON o.rt_order = f.first_order";
/// The accounts whose first linked resource type (`cls_first_type`) is not their committed
/// class (`cls_committed`): one entity's, as `key`.
const RELINKED_SQL: &str = "
    WITH now AS (SELECT account_key, resource_type FROM cls_first_type),
    was AS (
        SELECT account_key, class AS resource_type FROM cls_committed
        WHERE class IN (SELECT _rt FROM cls_rt_order))
    SELECT account_key AS key FROM ((SELECT * FROM now EXCEPT SELECT * FROM was)
                                    UNION ALL (SELECT * FROM was EXCEPT SELECT * FROM now))";

pub async fn run(rc: &RunContext<'_>, task: &Task) -> Result<TaskOutcome> {
    let (ctx, catalog) = session(rc).await?;
    let model = &rc.pipeline.model;
    let rts = super::correlation_keys::selected(rc, task);
    let targets: BTreeSet<&str> = rts
        .iter()
        .map(|rt| rt.target.as_str())
        .chain(model.classifications.iter().map(|c| c.target.as_str()))
        .collect();
    if targets.is_empty() {
        return Ok(TaskOutcome::skipped(
            "no resource type or classification rule",
        ));
    }
    let correlations = if catalog.tables.contains_key("correlations") {
        Some(ctx.table("correlations").await?)
    } else {
        None
    };
    // Dirty: only the accounts in scope, and those whose linked resource type no longer matches
    // their committed class, are classified again (a class depends on nothing else).
    let scope = match super::dirty::scope(rc, &ctx, &catalog, task).await? {
        Some(scope) if catalog.tables.contains_key(TABLE) => Some(scope),
        _ => None,
    };
    let mut frames = Vec::new();
    let mut replaced_keys = Vec::new();
    for &target in &targets {
        let entity = rc.pipeline.entity(target).expect("invariant: validated");
        let mut table = require(&ctx, &catalog, target, "synchronize").await?;
        let key = cast(quoted(&entity.key), DataType::Utf8);

        // Linked correlations of resource types on this entity, with their file order.
        let rt_names: Vec<&str> = model
            .resource_types
            .iter()
            .filter(|rt| rt.target == target)
            .map(|rt| rt.name.as_str())
            .collect();
        let types = rt_names.len();
        let orders: Vec<i64> = (0..types as i64).collect();
        let rt_order = ctx.read_batch(
            RecordBatch::try_new(
                Arc::new(Schema::new(vec![
                    Field::new("_rt", DataType::Utf8, false),
                    Field::new("rt_order", DataType::Int64, false),
                ])),
                vec![
                    Arc::new(datafusion::arrow::array::StringArray::from_iter_values(
                        rt_names,
                    )),
                    Arc::new(Int64Array::from(orders)),
                ],
            )
            .map_err(|e| Error::Engine(e.into()))?,
        )?;
        view(&ctx, "cls_rt_order", rt_order.clone())?;
        let linked = match &correlations {
            Some(c) => c
                .clone()
                .filter(col("status").eq(lit("linked")))?
                .join(
                    rt_order,
                    JoinType::Inner,
                    &["resource_type"],
                    &["_rt"],
                    None,
                )?
                .select(vec![
                    col("account_key"),
                    col("resource_type"),
                    col("rt_order"),
                ])?,
            None => rt_order.filter(lit(false))?.select(vec![
                cast(col("_rt"), DataType::Utf8).alias("account_key"),
                col("_rt").alias("resource_type"),
                col("rt_order"),
            ])?,
        };
        view(&ctx, "cls_linked", linked)?;
        // With one resource type of the target, an account has one correlation row at most:
        // its linked row names its type, with no grouping of a million accounts.
        let first_type = match types {
            1 => ctx
                .table("cls_linked")
                .await?
                .select(vec![col("account_key"), col("resource_type")])?,
            _ => ctx.sql(FIRST_TYPE_SQL).await?,
        };
        view(&ctx, "cls_first_type", first_type)?;
        if let Some(scope) = &scope {
            let in_scope = scope
                .accounts
                .clone()
                .filter(col("entity").eq(lit(target)))?
                .select(vec![col("key")])?;
            let keys = if scope.correlated {
                in_scope
            } else {
                // Without the dirty role model's list of the accounts whose correlation
                // changed: those whose first linked resource type is not their committed class.
                view(
                    &ctx,
                    "cls_committed",
                    ctx.table(TABLE)
                        .await?
                        .filter(col("entity").eq(lit(target)))?,
                )?;
                let relinked = ctx.sql(RELINKED_SQL).await?;
                in_scope.union(relinked)?
            };
            let keys = keys
                .distinct()?
                .select(vec![lit(target).alias("entity"), col("key")])?;
            let keys = super::role_model::materialize(&ctx, keys).await?;
            table = super::dirty::restrict(table, quoted(&entity.key), target, &keys)?;
            replaced_keys.push(keys);
        }
        view(
            &ctx,
            "cls_accounts",
            table
                .clone()
                .select(vec![key.clone().alias("account_key")])?,
        )?;

        // Classification rules on this entity, by file order.
        let rules: Vec<(usize, &crate::config::Classification)> = model
            .classifications
            .iter()
            .enumerate()
            .filter(|(_, c)| c.target == target)
            .collect();
        let named: Vec<(String, &ConfigExpr)> = rules
            .iter()
            .map(|(i, c)| (i.to_string(), &c.rule))
            .collect();
        let hits = rule_hits(&ctx, table, key, &named, "_order")?.select(vec![
            col("owner_key").alias("account_key"),
            cast(col("_order"), DataType::Int64).alias("rule_order"),
        ])?;
        // Read twice by classification.sql (the first rule, the protection): run once.
        let hits = super::role_model::materialize(&ctx, hits).await?;
        view(&ctx, "cls_hits", hits)?;
        let rules_batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("rule_order", DataType::Int64, false),
                Field::new("class", DataType::Utf8, false),
                Field::new("protect", DataType::Boolean, false),
            ])),
            vec![
                Arc::new(Int64Array::from_iter_values(
                    rules.iter().map(|(i, _)| *i as i64),
                )),
                Arc::new(datafusion::arrow::array::StringArray::from_iter_values(
                    rules.iter().map(|(_, c)| c.name.as_str()),
                )),
                Arc::new(BooleanArray::from(
                    rules.iter().map(|(_, c)| c.protect).collect::<Vec<_>>(),
                )),
            ],
        )
        .map_err(|e| Error::Engine(e.into()))?;
        view(&ctx, "cls_rules", ctx.read_batch(rules_batch)?)?;
        let result = ctx.sql(CLASSIFICATION_SQL).await?;
        let result = super::role_model::materialize(&ctx, result).await?;
        frames.push(result.select(vec![
            lit(target).alias("entity"),
            col("account_key"),
            col("class"),
            col("protect"),
        ])?);
    }
    let order = ["entity", "account_key"];
    if scope.is_none() {
        // Complete: each target's rows come sorted by account key (classification.sql) and
        // the targets by name, so one after the other they are in the table's order, which
        // the table keeps without sorting them again. Checked, not assumed: rows out of that
        // order are sorted below.
        if let Some(first) = frames.first() {
            let schema: SchemaRef = Arc::new(first.schema().as_arrow().clone());
            let parts = frames.iter().cloned();
            if let Some(batches) =
                crate::engine::concat_ascending(&ctx, parts, "account_key", &schema).await?
            {
                let table = NewTable::new(TABLE, (schema, batches));
                return finish(rc, &ctx, &catalog, table, None).await;
            }
        }
    }
    let all = match union_all(frames)? {
        Some(df) => df,
        None => empty(
            &ctx,
            Arc::new(Schema::new(vec![Field::new(
                "entity",
                DataType::Utf8,
                true,
            )])),
        )?,
    };
    let mut replaced_rows = None;
    let table = if scope.is_some() {
        let columns: Vec<Expr> = ["entity", "account_key", "class", "protect"]
            .iter()
            .map(|c| col(*c))
            .collect();
        let keys = union_all(replaced_keys)?.expect("one target at least");
        replaced_rows = Some(keys.clone());
        let replacement = Replacement {
            old: ctx.table(TABLE).await?.select(columns.clone())?,
            keys,
            on: vec!["entity", "account_key"],
            new: all.select(columns)?,
            differs: false,
        };
        NewTable::replaced(rc, &catalog, &ctx, TABLE, replacement, &order, false).await?
    } else {
        let order = order.iter().map(|c| col(*c).sort(true, true)).collect();
        NewTable::from_frame(TABLE, all.sort(order)?).await?
    };
    finish(rc, &ctx, &catalog, table, replaced_rows).await
}

/// Counts the new table's classes and commits it.
async fn finish(
    rc: &RunContext<'_>,
    ctx: &SessionContext,
    catalog: &crate::store::Catalog,
    table: NewTable,
    replaced_rows: Option<DataFrame>,
) -> Result<TaskOutcome> {
    // Counted over the new table (the committed one when unchanged).
    let counted = match (table.known, &table.patch, replaced_rows) {
        (Known::Unchanged { .. }, _, _) => ctx.table(TABLE).await?,
        // A patch holds the recomputed rows only: with the committed ones it keeps.
        (_, Some(_), Some(keys)) => {
            let keys = keys.select(vec![col("entity").alias("_e"), col("key").alias("_k")])?;
            ctx.table(TABLE)
                .await?
                .join(
                    keys,
                    JoinType::LeftAnti,
                    &["entity", "account_key"],
                    &["_e", "_k"],
                    None,
                )?
                .select(vec![col("class")])?
                .union(frame(ctx, &table.schema, &table.batches)?.select(vec![col("class")])?)?
        }
        _ => frame(ctx, &table.schema, &table.batches)?,
    };
    let summary = counted
        .aggregate(
            vec![col("class")],
            vec![datafusion::functions_aggregate::expr_fn::count(lit(1)).alias("n")],
        )?
        .select(vec![
            cast(col("class"), DataType::Utf8).alias("class"),
            cast(col("n"), DataType::Int64).alias("n"),
        ])?
        .sort(vec![col("class").sort(true, true)])?
        .collect()
        .await?;
    let mut parts = Vec::new();
    for b in &summary {
        let class = b
            .column(0)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::StringArray>();
        let n = b.column(1).as_any().downcast_ref::<Int64Array>();
        if let (Some(class), Some(n)) = (class, n) {
            for i in 0..b.num_rows() {
                parts.push(format!("{} {}", n.value(i), class.value(i)));
            }
        }
    }
    let rows = table.rows();
    let committed_now =
        commit_tables_counted(rc, catalog, "task:update_classification", vec![table]).await?;
    let written = committed_now.rows;
    Ok(TaskOutcome {
        status: if committed_now.tables == 0 && !rc.dry_run {
            TaskStatus::NoChanges
        } else {
            TaskStatus::Succeeded
        },
        rows_read: rows,
        rows_written: written,
        changes: rows,
        message: format!("classified {rows} account(s): {}", parts.join(", ")),
        exit_code: 0,
    })
}
