//! `save_pre_existing_access_rights`: on a first load, every link value that a linked account
//! already has but no rule explains becomes a pre-existing right, so the first run revokes
//! nothing (SPEC section 5).
//!
//! The rights go to `pre_existing_rights` (`resource_type`, `owner_key`, `link`, `value`,
//! `run_id`), added to the ones saved before; the role model is then recomputed so that
//! `assigned_links` (and `assigned_roles`, origin `pre_existing`, for values a role grants)
//! include them.

use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::*;

use super::correlation_keys::selected;
use super::frames::{NewTable, commit_tables_counted, quoted, require, session};
use super::role_model::{PRE_EXISTING, union_all};
use super::{RunContext, TaskOutcome, TaskStatus};
use crate::config::Task;
use crate::error::Result;

pub async fn run(rc: &RunContext<'_>, task: &Task) -> Result<TaskOutcome> {
    let (ctx, catalog) = session(rc).await?;
    let rts = selected(rc, task);
    let correlations = require(&ctx, &catalog, "correlations", "compute_role_model").await?;
    let desired = require(&ctx, &catalog, "assigned_links", "compute_role_model").await?;
    let mut frames = Vec::new();
    for rt in &rts {
        let linked = correlations
            .clone()
            .filter(
                col("resource_type")
                    .eq(lit(rt.name.as_str()))
                    .and(col("status").eq(lit("linked"))),
            )?
            .select(vec![col("account_key").alias("_ak"), col("owner_key")])?;
        for l in &rt.links {
            let link = rc.pipeline.link(&l.link).expect("invariant: validated");
            if !catalog.tables.contains_key(&l.link) {
                continue;
            }
            let current = ctx.table(l.link.as_str()).await?.select(vec![
                cast(quoted(&link.from.column), DataType::Utf8).alias("_account"),
                cast(quoted(&link.to.column), DataType::Utf8).alias("value"),
            ])?;
            let wanted = desired
                .clone()
                .filter(
                    col("resource_type")
                        .eq(lit(rt.name.as_str()))
                        .and(col("link").eq(lit(l.link.as_str()))),
                )?
                .select(vec![
                    col("owner_key").alias("_wo"),
                    col("value").alias("_wv"),
                ])?;
            frames.push(
                current
                    .join(
                        linked.clone(),
                        JoinType::Inner,
                        &["_account"],
                        &["_ak"],
                        None,
                    )?
                    .join(
                        wanted,
                        JoinType::LeftAnti,
                        &["owner_key", "value"],
                        &["_wo", "_wv"],
                        None,
                    )?
                    .select(vec![
                        lit(rt.name.as_str()).alias("resource_type"),
                        col("owner_key"),
                        lit(l.link.as_str()).alias("link"),
                        col("value"),
                        lit(rc.run_id.as_str()).alias("run_id"),
                    ])?,
            );
        }
    }
    let Some(found) = union_all(frames)? else {
        return Ok(TaskOutcome::skipped("no resource type has links"));
    };
    let found = found.distinct()?;
    let new_rights = found.clone().count().await? as u64;
    let all = if catalog.tables.contains_key(PRE_EXISTING) {
        let old = ctx.table(PRE_EXISTING).await?;
        // Keep the first run that saved a right.
        let fresh = found.join(
            old.clone().select(vec![
                col("resource_type").alias("_r"),
                col("owner_key").alias("_o"),
                col("link").alias("_l"),
                col("value").alias("_v"),
            ])?,
            JoinType::LeftAnti,
            &["resource_type", "owner_key", "link", "value"],
            &["_r", "_o", "_l", "_v"],
            None,
        )?;
        old.union(fresh)?
    } else {
        found
    };
    let all = all.sort(vec![
        col("resource_type").sort(true, true),
        col("owner_key").sort(true, true),
        col("link").sort(true, true),
        col("value").sort(true, true),
    ])?;
    let table = NewTable::from_frame(PRE_EXISTING, all).await?;
    let committed_now = commit_tables_counted(
        rc,
        &catalog,
        "task:save_pre_existing_access_rights",
        vec![table],
    )
    .await?;
    let written = committed_now.rows;
    // The role model again, now with the saved rights.
    let model = super::role_model::run(rc, task).await?;
    Ok(TaskOutcome {
        status: match model.status {
            TaskStatus::Warning => TaskStatus::Warning,
            TaskStatus::NoChanges if committed_now.tables == 0 => TaskStatus::NoChanges,
            _ => TaskStatus::Succeeded,
        },
        rows_read: 0,
        rows_written: written + model.rows_written,
        changes: new_rights,
        message: format!(
            "{new_rights} pre-existing right(s) saved; role model: {}",
            model.message
        ),
        exit_code: 0,
    })
}
