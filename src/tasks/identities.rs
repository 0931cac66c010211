//! `update_identities` (SPEC section 9): updates accounts from their owner, deactivates and
//! reactivates them with the owner's state, and starts the anonymization of deleted owners.
//!
//! The work items are one fixed query (`sql/identity_workitems.sql`) over the linked accounts
//! and their owners; the actions are set operations over the items:
//! - `identity_updates` (`resource_type`, `account_key`, `attribute`, `serialized_value`,
//!   `old_serialized_value`, `has_changed`, `to_delete`): every updatable scalar (not
//!   `create_only`) recomputed from the owner — from the anonymized owner for accounts to
//!   anonymize — against the last provisioned value, which is the target's current value;
//! - `identity_states` (`resource_type`, `account_key`, `owner_key`, `active`,
//!   `has_active_changed`, `anonymization_status`, `run_id`): the engine's view of each account
//!   it acted on (deactivated, reactivated, anonymization status 3 or 4);
//! - `identity_events` (`resource_type`, `account_key`, `owner_key`, `event`, `run_id`):
//!   `UserAccountDeactivationRequested`, `UserAccountActivated`.
//!
//! A second run over the same state changes nothing: activity is read back from
//! `identity_states`, and unchanged tables are not rewritten.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::ScalarValue;
use datafusion::prelude::*;

use super::frames::{NewTable, commit_tables_counted, committed, quoted, require, session};
use super::role_model::{empty, materialize, target_type, union_all, view};
use super::{RunContext, TaskOutcome, TaskStatus};
use crate::config::{ResourceType, Task};
use crate::error::{Error, Result};

const WORKITEMS_SQL: &str = include_str!("../../sql/identity_workitems.sql");

pub async fn run(rc: &RunContext<'_>, task: &Task) -> Result<TaskOutcome> {
    let Some(lifecycle) = &rc.pipeline.model.lifecycle else {
        return Err(Error::TaskFailed(
            "update_identities needs a [lifecycle] section in pipeline.toml".into(),
        ));
    };
    let (ctx, catalog) = session(rc).await?;
    let owner_entity = rc
        .pipeline
        .entity(&lifecycle.owner)
        .expect("invariant: validated");
    let owner_key = cast(quoted(&owner_entity.key), DataType::Utf8);
    let owners = require(&ctx, &catalog, &lifecycle.owner, "synchronize").await?;
    let state = ctx.parse_sql_expr(&lifecycle.state.text, owners.schema())?;
    let anon = match &lifecycle.anonymization_status {
        Some(e) => ctx.parse_sql_expr(&e.text, owners.schema())?,
        None => lit(0i64),
    };
    // The engine's own anonymization status (4, 5) wins over the export's column.
    let engine_status = super::anonymize::anonymized(&ctx, &catalog).await?;
    view(
        &ctx,
        "li_owners",
        owners
            .clone()
            .join_on(
                engine_status,
                JoinType::Left,
                vec![owner_key.clone().eq(col("_anon_key"))],
            )?
            .select(vec![
                owner_key.clone().alias("owner_key"),
                try_cast(state, DataType::Int64).alias("state"),
                datafusion::functions::core::expr_fn::coalesce(vec![
                    col("_anon_status"),
                    try_cast(anon, DataType::Int64),
                    lit(0i64),
                ])
                .alias("anonymization_status"),
            ])?,
    )?;
    // The owner with its personal columns replaced by the `anonymize` expressions.
    let anonymized = super::anonymize::anonymize_columns(
        &ctx,
        owners.clone(),
        owner_entity,
        lifecycle,
        lit(true),
    )?;
    let anonymized = crate::engine::expr::apply_computed(
        &ctx,
        anonymized.select(
            owner_entity
                .columns
                .iter()
                .map(|c| quoted(&c.name))
                .collect::<Vec<_>>(),
        )?,
        owner_entity,
    )?;

    let states_schema = states_schema();
    let old_states = committed(&ctx, &catalog, "identity_states", &states_schema).await?;
    let mut updates = Vec::new();
    let mut states = Vec::new();
    let mut events = Vec::new();
    let mut counts = Vec::new();
    let mut gone = Vec::new();
    for rt in super::correlation_keys::selected(rc, task) {
        let Some(l) = &rt.lifecycle else { continue };
        if rt.owner != lifecycle.owner {
            continue;
        }
        let connector_update = rc
            .pipeline
            .connectors
            .get(&rt.connector)
            .is_some_and(|c| c.update);
        let items = workitems(
            rc,
            &ctx,
            &catalog,
            rt,
            l,
            connector_update,
            old_states.clone(),
        )
        .await?;
        let n = items.clone().count().await?;
        counts.push(format!("{}: {n} work item(s)", rt.name));

        // Updates: scalars from the owner (anonymized for anonymization items).
        let upd = scalar_updates(
            rc,
            &ctx,
            &catalog,
            rt,
            &items,
            owners.clone(),
            anonymized.clone(),
        )
        .await?;
        let upd = materialize(&ctx, upd).await?;
        updates.push(upd.clone());

        // Activity and anonymization status.
        let changed_accounts = upd
            .clone()
            .filter(col("has_changed"))?
            .select(vec![col("account_key").alias("_ck")])?
            .distinct()?;
        let rt_name = lit(rt.name.as_str());
        let stored = old_states
            .clone()
            .filter(col("resource_type").eq(rt_name.clone()))?
            .select(vec![
                col("account_key").alias("_oa"),
                col("anonymization_status").alias("_old_anon"),
            ])?;
        let new_anon = when(
            col("anonymize_item").is_true(),
            when(col("_ck").is_not_null(), lit(3i64)).otherwise(lit(4i64))?,
        )
        .otherwise(lit(ScalarValue::Int64(None)))?;
        // Only accounts whose activity or anonymization status changes get a new row.
        let acted = items
            .clone()
            .join(
                changed_accounts,
                JoinType::Left,
                &["account_key"],
                &["_ck"],
                None,
            )?
            .join(stored, JoinType::Left, &["account_key"], &["_oa"], None)?
            .filter(
                col("deactivate_item")
                    .is_true()
                    .or(col("reactivate_item").is_true())
                    .or(col("anonymize_item").is_true().and(
                        datafusion::logical_expr::binary_expr(
                            new_anon.clone(),
                            datafusion::logical_expr::Operator::IsDistinctFrom,
                            col("_old_anon"),
                        ),
                    )),
            )?
            .select(vec![
                rt_name.clone().alias("resource_type"),
                col("account_key"),
                col("owner_key"),
                when(col("deactivate_item").is_true(), lit(false))
                    .when(col("reactivate_item").is_true(), lit(true))
                    .otherwise(col("active"))?
                    .alias("active"),
                col("deactivate_item")
                    .is_true()
                    .or(col("reactivate_item").is_true())
                    .alias("has_active_changed"),
                new_anon.alias("anonymization_status"),
                lit(rc.run_id.as_str()).alias("run_id"),
            ])?;
        let acted = materialize(&ctx, acted).await?;
        states.push(acted.clone());
        // An owner that left the export while accounts of it waited for their anonymized values
        // to be provisioned (status 3) has no row left to compute them from: those accounts
        // wait no longer (status 4; the role model's `on_lost` treatment is what reaches them),
        // so the owner reaches status 4 below and its history is scrubbed.
        let abandoned = old_states
            .clone()
            .filter(
                col("resource_type")
                    .eq(rt_name.clone())
                    .and(col("anonymization_status").eq(lit(3i64))),
            )?
            .join(
                ctx.table("li_owners")
                    .await?
                    .select(vec![col("owner_key").alias("_present")])?,
                JoinType::LeftAnti,
                &["owner_key"],
                &["_present"],
                None,
            )?
            .select(vec![
                col("resource_type"),
                col("account_key"),
                col("owner_key"),
                col("active"),
                lit(false).alias("has_active_changed"),
                lit(4i64).alias("anonymization_status"),
                lit(rc.run_id.as_str()).alias("run_id"),
            ])?;
        let abandoned = materialize(&ctx, abandoned).await?;
        gone.push(abandoned.clone().select(vec![col("owner_key")])?);
        states.push(abandoned);
        events.push(acted.filter(col("has_active_changed"))?.select(vec![
                    col("resource_type"),
                    col("account_key"),
                    col("owner_key"),
                    when(col("active"), lit("UserAccountActivated"))
                        .otherwise(lit("UserAccountDeactivationRequested"))?
                        .alias("event"),
                    col("run_id"),
                ])?);
    }

    // identity_updates: the accounts processed now replace their rows.
    let updates_schema = Arc::new(Schema::new(vec![
        Field::new("resource_type", DataType::Utf8, true),
        Field::new("account_key", DataType::Utf8, true),
        Field::new("attribute", DataType::Utf8, true),
        Field::new("serialized_value", DataType::Utf8, true),
        Field::new("old_serialized_value", DataType::Utf8, true),
        Field::new("has_changed", DataType::Boolean, true),
        Field::new("to_delete", DataType::Boolean, true),
    ]));
    let new_updates =
        union_all(updates)?.map_or_else(|| empty(&ctx, updates_schema.clone()), Ok)?;
    let new_updates = materialize(&ctx, new_updates).await?;
    let old_updates = committed(&ctx, &catalog, "identity_updates", &updates_schema).await?;
    let all_updates = old_updates
        .join(
            new_updates
                .clone()
                .select(vec![
                    col("resource_type").alias("_r"),
                    col("account_key").alias("_a"),
                ])?
                .distinct()?,
            JoinType::LeftAnti,
            &["resource_type", "account_key"],
            &["_r", "_a"],
            None,
        )?
        .union(new_updates.clone())?
        .sort(vec![
            col("resource_type").sort(true, true),
            col("account_key").sort(true, true),
            col("attribute").sort(true, true),
        ])?;

    // identity_states: the accounts acted on replace their rows.
    let new_states = union_all(states)?.map_or_else(|| empty(&ctx, states_schema.clone()), Ok)?;
    let new_states = materialize(&ctx, new_states).await?;
    let all_states = old_states
        .join(
            new_states.clone().select(vec![
                col("resource_type").alias("_r"),
                col("account_key").alias("_a"),
            ])?,
            JoinType::LeftAnti,
            &["resource_type", "account_key"],
            &["_r", "_a"],
            None,
        )?
        .union(new_states)?
        .sort(vec![
            col("resource_type").sort(true, true),
            col("account_key").sort(true, true),
        ])?;
    let all_states = materialize(&ctx, all_states).await?;

    // Owners to anonymize whose accounts wait for no anonymized value any more (or who have
    // none) reach status 4, and so do owners gone from the export whose accounts stopped
    // waiting above; their history is scrubbed below.
    let waiting = all_states
        .clone()
        .filter(col("anonymization_status").eq(lit(3i64)))?
        .select(vec![col("owner_key").alias("_w")])?;
    let owners_schema = super::anonymize::owners_schema();
    let recorded = committed(&ctx, &catalog, super::anonymize::OWNERS, &owners_schema).await?;
    let to_reach = ctx
        .table("li_owners")
        .await?
        .filter(
            col("state")
                .eq(lit(2i64))
                .and(col("anonymization_status").eq(lit(2i64))),
        )?
        .select(vec![col("owner_key")])?;
    let to_reach = match union_all(gone)? {
        Some(gone) => to_reach.union(gone)?.distinct()?.join(
            recorded
                .clone()
                .select(vec![col("owner_key").alias("_r")])?,
            JoinType::LeftAnti,
            &["owner_key"],
            &["_r"],
            None,
        )?,
        None => to_reach,
    };
    let reached = to_reach
        .join(waiting, JoinType::LeftAnti, &["owner_key"], &["_w"], None)?
        .select(vec![
            col("owner_key"),
            lit(4i64).alias("status"),
            lit(rc.run_id.as_str()).alias("run_id"),
            cast(lit(ScalarValue::Null), DataType::Utf8).alias("scrubbed_run_id"),
        ])?;
    let reached = materialize(&ctx, reached).await?;
    let to_anonymize = reached.clone().count().await?;
    let all_owners = recorded
        .union(reached)?
        .sort(vec![col("owner_key").sort(true, true)])?;

    let events_schema = Arc::new(Schema::new(
        [
            "resource_type",
            "account_key",
            "owner_key",
            "event",
            "run_id",
        ]
        .iter()
        .map(|n| Field::new(*n, DataType::Utf8, true))
        .collect::<Vec<_>>(),
    ));
    let new_events = union_all(events)?.map_or_else(|| empty(&ctx, events_schema.clone()), Ok)?;
    let new_events = materialize(&ctx, new_events).await?;
    let event_count = new_events.clone().count().await?;
    let changed_values = new_updates
        .clone()
        .filter(col("has_changed"))?
        .count()
        .await?;
    let mut tables = vec![
        NewTable::from_frame("identity_updates", all_updates).await?,
        NewTable::from_frame("identity_states", all_states).await?,
    ];
    tables.push(NewTable::from_frame(super::anonymize::OWNERS, all_owners).await?);
    // The table exists once the task has run, empty or not (SPEC 10: every table is queryable).
    if event_count > 0 || !catalog.tables.contains_key("identity_events") {
        let old_events = committed(&ctx, &catalog, "identity_events", &events_schema).await?;
        tables.push(NewTable::from_frame("identity_events", old_events.union(new_events)?).await?);
    }
    let committed_now =
        commit_tables_counted(rc, &catalog, "task:update_identities", tables).await?;
    let written = committed_now.rows;
    let mut message = format!(
        "{}; {changed_values} changed value(s), {event_count} event(s)",
        if counts.is_empty() {
            "no resource type with a lifecycle".to_string()
        } else {
            counts.join(", ")
        }
    );
    // Fast track: the changed accounts' orders in this run (the orders task of the resource
    // types with a lifecycle, as the job's own orders task would emit them).
    let mut exit_code = 0;
    let mut fast_blocked = false;
    if lifecycle.fast_track && changed_values + event_count > 0 {
        let mut fast = task.clone();
        fast.name = format!("{}:fast_track", task.name);
        fast.kind = "generate_provisioning_orders".into();
        fast.dirty = false;
        fast.resource_types = Some(
            super::correlation_keys::selected(rc, task)
                .into_iter()
                .filter(|rt| rt.lifecycle.is_some() && rt.owner == lifecycle.owner)
                .map(|rt| rt.name.clone())
                .collect(),
        );
        // Its own commit: the identity tables above are committed, so when another run (or
        // this run's orders task) commits the orders meanwhile, only the orders run again.
        let orders = super::again_on_conflict(&fast, || super::orders::run(rc, &fast)).await?;
        exit_code = orders.exit_code;
        // Fast-track orders above a provisioning threshold block this task as they would
        // block the orders task (the job exits 3).
        fast_blocked = orders.status == TaskStatus::Blocked;
        message.push_str(&format!("; fast track: {}", orders.message));
    }
    let mut scrubbed = 0;
    if rc.dry_run {
        if to_anonymize > 0 {
            message.push_str(&format!(
                "; would anonymize the history of {to_anonymize} owner(s)"
            ));
        }
    } else if let Some(report) = super::anonymize::scrub_pending(rc, lifecycle).await? {
        scrubbed = report.rows + report.owners;
        message.push_str("; ");
        message.push_str(&report.message());
    }
    Ok(TaskOutcome {
        status: if fast_blocked {
            TaskStatus::Blocked
        } else if committed_now.tables == 0 && scrubbed == 0 && !rc.dry_run {
            TaskStatus::NoChanges
        } else {
            TaskStatus::Succeeded
        },
        rows_read: 0,
        rows_written: written,
        changes: (changed_values + event_count) as u64 + scrubbed,
        message,
        exit_code,
    })
}

fn states_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("resource_type", DataType::Utf8, true),
        Field::new("account_key", DataType::Utf8, true),
        Field::new("owner_key", DataType::Utf8, true),
        Field::new("active", DataType::Boolean, true),
        Field::new("has_active_changed", DataType::Boolean, true),
        Field::new("anonymization_status", DataType::Int64, true),
        Field::new("run_id", DataType::Utf8, true),
    ]))
}

/// The work items of one resource type (see `sql/identity_workitems.sql`).
async fn workitems(
    rc: &RunContext<'_>,
    ctx: &SessionContext,
    catalog: &crate::store::Catalog,
    rt: &ResourceType,
    l: &crate::config::RtLifecycle,
    connector_update: bool,
    old_states: DataFrame,
) -> Result<DataFrame> {
    let target_entity = rc
        .pipeline
        .entity(&rt.target)
        .expect("invariant: validated");
    let target = require(ctx, catalog, &rt.target, "synchronize").await?;
    let active = match &l.active {
        Some(e) => ctx.parse_sql_expr(&e.text, target.schema())?,
        None => lit(true),
    };
    let deactivated_by = match &l.deactivated_by {
        Some(e) => cast(
            ctx.parse_sql_expr(&e.text, target.schema())?,
            DataType::Utf8,
        ),
        None => cast(lit(ScalarValue::Null), DataType::Utf8),
    };
    let linked = require(ctx, catalog, "correlations", "compute_role_model")
        .await?
        .filter(
            col("resource_type")
                .eq(lit(rt.name.as_str()))
                .and(col("status").eq(lit("linked"))),
        )?
        .select(vec![col("account_key").alias("_lk"), col("owner_key")])?;
    let engine = old_states
        .filter(col("resource_type").eq(lit(rt.name.as_str())))?
        .select(vec![
            col("account_key").alias("_ek"),
            col("active").alias("_engine_active"),
        ])?;
    let accounts = target
        .select(vec![
            cast(quoted(&target_entity.key), DataType::Utf8).alias("account_key"),
            active.alias("_target_active"),
            deactivated_by.alias("deactivated_by"),
        ])?
        .join(linked, JoinType::Inner, &["account_key"], &["_lk"], None)?
        .join(engine, JoinType::Left, &["account_key"], &["_ek"], None)?
        .select(vec![
            col("account_key"),
            col("owner_key"),
            datafusion::functions::core::expr_fn::coalesce(vec![
                col("_engine_active"),
                col("_target_active"),
                lit(true),
            ])
            .alias("active"),
            col("deactivated_by"),
        ])?;
    view(ctx, "li_accounts", accounts)?;
    let flags = ctx.read_batch(
        datafusion::arrow::array::RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("features", DataType::Boolean, false),
                Field::new("update_when_owner_disabled", DataType::Boolean, false),
            ])),
            vec![
                Arc::new(datafusion::arrow::array::BooleanArray::from(vec![
                    l.update && connector_update,
                ])),
                Arc::new(datafusion::arrow::array::BooleanArray::from(vec![
                    l.update_when_owner_disabled,
                ])),
            ],
        )
        .map_err(|e| Error::Engine(e.into()))?,
    )?;
    view(ctx, "li_flags", flags)?;
    let items = ctx.sql(WORKITEMS_SQL).await?;
    materialize(ctx, items).await
}

/// `identity_updates` rows of the update items of one resource type.
async fn scalar_updates(
    rc: &RunContext<'_>,
    ctx: &SessionContext,
    catalog: &crate::store::Catalog,
    rt: &ResourceType,
    items: &DataFrame,
    owners: DataFrame,
    anonymized: DataFrame,
) -> Result<DataFrame> {
    let owner_entity = rc.pipeline.entity(&rt.owner).expect("invariant: validated");
    let target_entity = rc
        .pipeline
        .entity(&rt.target)
        .expect("invariant: validated");
    // The `disable` columns carry the account's activity, which deactivation and
    // reactivation manage: an update never re-enables a leaver's account.
    let updatable: Vec<&(String, crate::config::ConfigExpr)> = rt
        .scalars
        .iter()
        .filter(|(c, _)| !rt.create_only.contains(c) && !rt.disable.iter().any(|(d, _)| d == c))
        .collect();
    let schema_cols = [
        "resource_type",
        "account_key",
        "attribute",
        "serialized_value",
        "old_serialized_value",
        "has_changed",
        "to_delete",
    ];
    if updatable.is_empty() {
        return empty(
            ctx,
            Arc::new(Schema::new(
                schema_cols
                    .iter()
                    .map(|n| {
                        Field::new(
                            *n,
                            if n.starts_with("has") || n.starts_with("to_") {
                                DataType::Boolean
                            } else {
                                DataType::Utf8
                            },
                            true,
                        )
                    })
                    .collect::<Vec<_>>(),
            )),
        );
    }
    let values = |owner: DataFrame| -> Result<DataFrame> {
        let owner = owner.with_column(
            "_owner_key",
            cast(quoted(&owner_entity.key), DataType::Utf8),
        )?;
        let mut frames = Vec::new();
        for (column, e) in &updatable {
            let value = ctx.parse_sql_expr(&e.text, owner.schema())?;
            frames.push(owner.clone().select(vec![
                    col("_owner_key").alias("_vo"),
                    lit(column.as_str()).alias("attribute"),
                    cast(try_cast(value, target_type(rc, rt, column)), DataType::Utf8)
                        .alias("serialized_value"),
                ])?);
        }
        Ok(union_all(frames)?.expect("at least one scalar"))
    };
    let normal = items
        .clone()
        .filter(
            col("update_item")
                .is_true()
                .and(col("anonymize_item").is_not_true()),
        )?
        .join(
            values(owners)?,
            JoinType::Inner,
            &["owner_key"],
            &["_vo"],
            None,
        )?;
    let anon = items
        .clone()
        .filter(
            col("update_item")
                .is_true()
                .and(col("anonymize_item").is_true()),
        )?
        .join(
            values(anonymized)?,
            JoinType::Inner,
            &["owner_key"],
            &["_vo"],
            None,
        )?;
    let new = normal
        .select(vec![
            col("account_key"),
            col("attribute"),
            col("serialized_value"),
        ])?
        .union(anon.select(vec![
            col("account_key"),
            col("attribute"),
            col("serialized_value"),
        ])?)?;
    // The last provisioned value: the target's current value, as text of its type.
    let target = require(ctx, catalog, &rt.target, "synchronize").await?;
    let mut current = Vec::new();
    for (column, _) in &updatable {
        current.push(target.clone().select(vec![
            cast(quoted(&target_entity.key), DataType::Utf8).alias("_ca"),
            lit(column.as_str()).alias("_cattr"),
            cast(quoted(column), DataType::Utf8).alias("old_serialized_value"),
        ])?);
    }
    let current = union_all(current)?.expect("at least one scalar");
    Ok(new
        .join(
            current,
            JoinType::Left,
            &["account_key", "attribute"],
            &["_ca", "_cattr"],
            None,
        )?
        .select(vec![
            lit(rt.name.as_str()).alias("resource_type"),
            col("account_key"),
            col("attribute"),
            col("serialized_value"),
            col("old_serialized_value"),
            datafusion::logical_expr::binary_expr(
                col("serialized_value"),
                datafusion::logical_expr::Operator::IsDistinctFrom,
                col("old_serialized_value"),
            )
            .alias("has_changed"),
            col("serialized_value")
                .is_null()
                .and(col("old_serialized_value").is_not_null())
                .alias("to_delete"),
        ])?)
}
