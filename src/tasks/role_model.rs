//! `compute_role_model`: correlations, assigned roles, assigned resources with their desired
//! scalars and link values (SPEC section 5).
//!
//! Every configuration expression is evaluated over a whole table into a long table of hits
//! (`owner_key`, name); the fixed SQL in `sql/` (correlations, assigned_roles,
//! assigned_resources) joins those. No value from the data is ever spliced into SQL text: the
//! only text that becomes SQL is the configuration's own expressions.
//!
//! Tables written (one atomic commit):
//! - `correlations` (`resource_type`, `account_key`, `owner_key`, `rule`, `status`, `conflict`)
//! - `assigned_roles` (`owner_key`, `role`, `origin`, `via`, `start_date`, `end_date`)
//! - `assigned_resources` (`resource_type`, `owner_key`, `account_key`, `state`)
//! - `assigned_scalars` (`resource_type`, `owner_key`, `attribute`, `value`): desired values,
//!   cast to the target column's type, as text
//! - `assigned_links` (`resource_type`, `owner_key`, `link`, `value`): desired link values

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{Array, Int32Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::error::DataFusionError;
use datafusion::prelude::*;

use super::correlation_keys::{self, selected};
use super::dirty::SemiOn;
use super::frames::{NewTable, Replacement, commit_tables_counted, quoted, require, session};
use super::{RunContext, TaskOutcome, TaskStatus};
use crate::config::{ConfigExpr, ResourceType, Task};
use crate::engine;
use crate::error::{Error, Result};
use crate::store::Catalog;

const PROPOSED_SQL: &str = include_str!("../../sql/correlation_proposed.sql");
const CORRELATIONS_SQL: &str = include_str!("../../sql/correlations.sql");
const MATCHES_SQL: &str = include_str!("../../sql/correlation_matches.sql");
const CANDIDATES_SQL: &str = include_str!("../../sql/correlation_candidates.sql");
const ASSIGNED_ROLES_SQL: &str = include_str!("../../sql/assigned_roles.sql");
const ASSIGNED_RESOURCES_SQL: &str = include_str!("../../sql/assigned_resources.sql");
const ASSIGNED_OWNERS_SQL: &str = include_str!("../../sql/assigned_owners.sql");

pub const PRE_EXISTING: &str = "pre_existing_rights";

pub async fn run(rc: &RunContext<'_>, task: &Task) -> Result<TaskOutcome> {
    let mut phases = super::Phases::new("role_model");
    let (ctx, catalog) = session(rc).await?;
    let rts = selected(rc, task);
    let mut warnings: Vec<String> = Vec::new();

    // 1. Correlations. Dirty: only the accounts whose correlation may have changed are
    // correlated again; the others keep their committed rows.
    let scope = super::dirty::scope(rc, &ctx, &catalog, task).await?;
    let before = match &scope {
        Some(s) if catalog.tables.contains_key("correlations") => {
            // Dirty: the committed correlations are cut to the affected accounts and owners
            // some ten times over (per resource type); read once, not decoded from the store
            // each time (while the changed owners' correlation keys of the last run are found).
            let (stored, before) = futures::try_join!(
                async { materialize(&ctx, ctx.table("correlations").await?).await },
                keys_before(rc, &ctx, &catalog, &s.since, &s.owners)
            )?;
            view(&ctx, "correlations", stored)?;
            before
        }
        _ => None,
    };
    let committed_correlations = match catalog.tables.contains_key("correlations") {
        true => Some(
            super::frames::committed(&ctx, &catalog, "correlations", &correlations_schema())
                .await?,
        ),
        false => None,
    };
    phases.done("scope");
    // Complete: the roles depend on the owners alone, not on the correlations. Sorted on a
    // task of their own while the accounts are matched below, they take the core the
    // matching leaves idle (BENCHMARKS.md, forty-eighth pass). Their warnings are said
    // after the matching's, as when they came after it.
    let early_roles = match &scope {
        None => {
            let (plan, manual_warnings) = assigned_roles(rc, &ctx, &catalog, None).await?;
            let ctx = ctx.clone();
            let task = tokio::spawn(async move { sorted_roles(&ctx, plan).await });
            Some((AbortOnDrop(task), manual_warnings))
        }
        Some(_) => None,
    };
    let mut correlations: Vec<(&str, DataFrame)> = Vec::new();
    let mut recorrelated: Vec<(DataFrame, DataFrame)> = Vec::new();
    let mut counts = Vec::new();
    let mut correlated_again = 0;
    for rt in &rts {
        let (affected, slices) = match (&scope, &before) {
            (Some(s), Some(b)) => {
                let slices = KeySlices::read(&ctx, rt).await?;
                phases.done("key slices");
                let a = affected_accounts(&ctx, rt, s, b.clone(), &slices, &mut phases).await?;
                let a = materialize(&ctx, a).await?;
                correlated_again += a.clone().count().await?;
                (Some(a), Some(slices))
            }
            _ => (None, None),
        };
        phases.done("affected accounts");
        let df = correlate(rc, &ctx, &catalog, rt, affected.as_ref(), slices).await?;
        // In the account order correlations.sql gives them, which a complete run keeps.
        let df = materialize_in_order(&ctx, df).await?;
        phases.done("correlate");
        let df = match affected {
            Some(a) => {
                let committed = committed_correlations.clone().expect("checked by `before`");
                let kept = not_correlated_again(committed, rt, &a)?;
                let keys = a.select(vec![
                    lit(rt.name.as_str()).alias("resource_type"),
                    col("k").alias("account_key"),
                ])?;
                recorrelated.push((keys, df.clone()));
                // Lazy: the kept rows are read once, by the merge below.
                kept.union(df)?
            }
            None => df,
        };
        correlations.push((rt.name.as_str(), df));
    }
    // Whole, with no other type's rows to keep: each type's rows come sorted by account key
    // (correlations.sql), so the types one after the other by name are in the table's order,
    // which the table then keeps without sorting them again. Checked, not assumed: rows out
    // of that order are sorted as before.
    let mut in_order = None;
    if scope.is_none()
        && !has_other_types(&ctx, &catalog, "correlations", &rts, &correlations_schema()).await?
    {
        correlations.sort_by_key(|(name, _)| *name);
        let schema = correlations_schema();
        let parts = correlations.iter().map(|(_, df)| df.clone());
        if let Some(batches) = engine::concat_ascending(&ctx, parts, "account_key", &schema).await?
        {
            in_order = Some(super::frames::frame(&ctx, &schema, &batches)?);
        }
        tracing::debug!(
            ascending = in_order.is_some(),
            "correlations in account order"
        );
    }
    let sorted = in_order.is_some();
    let correlations = match in_order {
        Some(df) => df,
        None => {
            let correlations = union_all(correlations.into_iter().map(|(_, df)| df).collect())?
                .map(Ok)
                .unwrap_or_else(|| empty(&ctx, correlations_schema()))?;
            let correlations =
                merge_other_types(&ctx, &catalog, "correlations", correlations, &rts).await?;
            materialize(&ctx, correlations).await?
        }
    };
    view(&ctx, "correlations_new", correlations.clone())?;
    phases.done("correlations merged");
    let statuses = status_counts(correlations.clone()).await?;
    for rt in &rts {
        let (linked, ambiguous, conflicts) =
            statuses.get(rt.name.as_str()).copied().unwrap_or_default();
        if ambiguous > 0 {
            warnings.push(format!(
                "{}: {ambiguous} ambiguous account(s) not linked",
                rt.name
            ));
        }
        if conflicts > 0 {
            warnings.push(format!(
                "{}: {conflicts} linked account(s) whose rules now match another owner (kept)",
                rt.name
            ));
        }
        counts.push(format!("{}: {linked} linked", rt.name));
    }
    phases.done("status counts");
    let recorrelated = if recorrelated.len() == rts.len() && !rts.is_empty() {
        let (keys, new): (Vec<_>, Vec<_>) = recorrelated.into_iter().unzip();
        Some((
            union_all(keys)?.expect("one per resource type"),
            union_all(new)?.expect("one per resource type"),
        ))
    } else {
        None
    };
    // Dirty: the correlation rows that changed, either side (`correlations_changed`). Only
    // the accounts correlated again can have changed: when some did, the committed rows they
    // replace are not read back to compare.
    let mut correlations_differ = false;
    if let (Some(_), Some(old)) = (&scope, committed_correlations.clone()) {
        let (new, old) = match &recorrelated {
            Some((keys, new)) => {
                let keys = keys.clone().select(vec![
                    col("resource_type").alias("_rt"),
                    col("account_key").alias("_account"),
                ])?;
                let old = old.join(
                    keys,
                    JoinType::LeftSemi,
                    &["resource_type", "account_key"],
                    &["_rt", "_account"],
                    None,
                )?;
                (new.clone(), old)
            }
            None => (correlations.clone(), old),
        };
        let changed = new.clone().except(old.clone())?.union(old.except(new)?)?;
        let changed = materialize(&ctx, changed).await?;
        correlations_differ = changed.clone().count().await? > 0;
        view(&ctx, "correlations_changed", changed)?;
    }
    let correlations = match recorrelated {
        Some((keys, new)) => Merged::Replaced(Box::new(Replacement {
            old: committed_correlations.expect("checked by `before`"),
            keys,
            on: vec!["resource_type", "account_key"],
            new,
            differs: correlations_differ,
        })),
        None if sorted => Merged::Sorted(correlations),
        None => Merged::Whole(correlations),
    };

    phases.done("correlations changed");
    // Dirty: the owners to recompute (None: all of them).
    let dirty = match &scope {
        None => None,
        Some(scope) => Some(materialize(&ctx, widen(&ctx, &catalog, &rts, scope).await?).await?),
    };

    phases.done("widen");
    // 2. Assigned roles.
    let assigned_roles = match early_roles {
        Some((task, manual_warnings)) => {
            warnings.extend(manual_warnings);
            task.join().await?
        }
        None => {
            let (plan, manual_warnings) =
                assigned_roles(rc, &ctx, &catalog, dirty.as_ref()).await?;
            warnings.extend(manual_warnings);
            sorted_roles(&ctx, plan).await?
        }
    };
    let role_order = ["owner_key", "role", "origin"];
    let roles = match &dirty {
        Some(d) if catalog.tables.contains_key("assigned_roles") => {
            let columns: Vec<Expr> = [
                "owner_key",
                "role",
                "origin",
                "via",
                "start_date",
                "end_date",
            ]
            .iter()
            .map(|c| col(*c))
            .collect();
            Merged::Replaced(Box::new(Replacement {
                old: ctx.table("assigned_roles").await?.select(columns.clone())?,
                keys: d.clone().select(vec![col("key")])?.distinct()?,
                on: vec!["owner_key"],
                new: assigned_roles.clone().select(columns)?,
                differs: false,
            }))
        }
        _ => Merged::Sorted(assigned_roles.clone()),
    };
    phases.done("roles");
    // In dirty mode the view holds the recomputed owners' roles only: every query below is
    // restricted to those owners.
    view(&ctx, "assigned_roles", assigned_roles)?;

    // 3. Assigned resources, desired scalars and links.
    let mut resources = Vec::new();
    let mut scalars = Vec::new();
    let mut links = Vec::new();
    let mut wide_scalars = Vec::new();
    for rt in &rts {
        let res = assigned_resources(rc, &ctx, &catalog, rt, dirty.as_ref()).await?;
        let res = materialize(&ctx, res).await?;
        let (desired, spread, wide) =
            desired_scalars(rc, &ctx, rt, res.clone(), &mut warnings).await?;
        scalars.push(desired);
        wide_scalars.push(wide.map(|(wide, attributes)| WideScalars {
            resource_type: rt.name.clone(),
            wide,
            attributes,
            resources: res.clone(),
            columns: resource_columns(rc, rt, true),
        }));
        links.push(desired_links(rc, &ctx, &catalog, rt, res.clone()).await?);
        resources.push(with_scalar_columns(rc, rt, res, spread)?);
    }
    let resources = or_empty(&ctx, union_all(resources)?, resources_schema(rc))?;
    let scalars = or_empty(&ctx, union_all(scalars)?, scalars_schema())?;
    let links = or_empty(&ctx, union_all(links)?, links_schema())?;
    let d = dirty.as_ref();
    let resources = merge_scoped(&ctx, &catalog, "assigned_resources", resources, &rts, d).await?;
    let scalars = merge_scoped(&ctx, &catalog, "assigned_scalars", scalars, &rts, d).await?;
    // Whole, with no other type's rows to keep, and scalars in every resource type: both
    // tables come in order from the owner tables ([`in_owner_order`]).
    let mut whole = d.is_none();
    for (table, schema) in [
        ("assigned_scalars", scalars_schema()),
        ("assigned_resources", resources_schema(rc)),
    ] {
        whole = whole && !has_other_types(&ctx, &catalog, table, &rts, &schema).await?;
    }
    let in_order = wide_scalars
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .filter(|_| whole);
    // A dirty run's links replace some owners' among the committed rows: as plain text, the
    // stored type, for the replacement's joins and comparisons.
    let links = match d {
        Some(_) => decoded(links)?,
        None => links,
    };
    let links = merge_scoped(&ctx, &catalog, "assigned_links", links, &rts, d)
        .await?
        .with_joins_as_written();

    phases.done("planned");
    // The five tables are independent queries: run together, they keep both cores busy.
    let (correlations, roles, (resources, scalars), links) = futures::try_join!(
        correlations.table(
            rc,
            &catalog,
            &ctx,
            "correlations",
            &["resource_type", "account_key"],
            false,
        ),
        roles.table(rc, &catalog, &ctx, "assigned_roles", &role_order, false),
        async {
            let started = std::time::Instant::now();
            if let Some(parts) = in_order
                && let Some((resources, scalars)) =
                    in_owner_order(&ctx, parts, resources_schema(rc)).await?
            {
                let tables = (
                    NewTable::new("assigned_resources", resources),
                    NewTable::new("assigned_scalars", scalars),
                );
                tracing::debug!(
                    table = "assigned_resources, assigned_scalars",
                    rows = tables.0.rows() + tables.1.rows(),
                    seconds = format!("{:.3}", started.elapsed().as_secs_f64()),
                    "role model table"
                );
                return Ok(tables);
            }
            futures::try_join!(
                resources.table(
                    rc,
                    &catalog,
                    &ctx,
                    "assigned_resources",
                    &["resource_type", "owner_key"],
                    false,
                ),
                scalars.table(
                    rc,
                    &catalog,
                    &ctx,
                    "assigned_scalars",
                    &["resource_type", "owner_key", "attribute"],
                    false,
                ),
            )
        },
        // Repeats are dropped here, over all resource types at once (the merged parts are
        // disjoint by resource type and owner), by the rank sort: cheaper than a DISTINCT per
        // type followed by a sort of ~13M rows at 1M identities.
        links.table(
            rc,
            &catalog,
            &ctx,
            "assigned_links",
            &["resource_type", "owner_key", "link", "value"],
            true,
        ),
    )?;
    phases.done("tables");
    let (roles_count, assigned) = (roles.rows(), resources.rows());
    let mut tables = vec![correlations, roles, resources, scalars, links];
    if let Some(d) = &dirty {
        // Hand the widened owner set to the orders task of this run.
        let extra = d.clone().select(vec![
            lit(rc.run_id.as_str()).alias("run_id"),
            lit(rc.as_of.to_string()).alias("as_of"),
            lit("owner").alias("kind"),
            col("entity"),
            col("key"),
        ])?;
        let mut extra = extra;
        // Accounts whose correlation changed: their orders (orphan, lost) are recomputed too.
        if catalog.tables.contains_key("correlations") {
            let changed = ctx.table("correlations_changed").await?;
            for rt in &rts {
                extra = extra.union(
                    changed
                        .clone()
                        .filter(col("resource_type").eq(lit(rt.name.as_str())))?
                        .select(vec![
                            lit(rc.run_id.as_str()).alias("run_id"),
                            lit(rc.as_of.to_string()).alias("as_of"),
                            lit("account").alias("kind"),
                            lit(rt.target.as_str()).alias("entity"),
                            col("account_key").alias("key"),
                        ])?,
                )?;
            }
            // A marker: the accounts whose correlation changed are in the scope (a dirty
            // classification relies on it).
            extra = extra.union(ctx.read_batch(text_batch(&[
                ("run_id", vec![rc.run_id.as_str()]),
                ("as_of", vec![rc.as_of.to_string().as_str()]),
                ("kind", vec![super::dirty::CORRELATED]),
                ("entity", vec![""]),
                ("key", vec![""]),
            ])?)?)?;
        }
        let all = ctx
            .table(super::dirty::TABLE)
            .await?
            .union(extra)?
            .distinct()?;
        tables.push(NewTable::from_frame(super::dirty::TABLE, all).await?);
    }
    phases.done("scope table");
    let committed_now =
        commit_tables_counted(rc, &catalog, "task:compute_role_model", tables).await?;
    phases.done("commit");
    let written = committed_now.rows;
    let mut message = format!(
        "{}; {roles_count} role assignment(s); {assigned} assigned resource(s)",
        counts.join(", ")
    );
    if before.is_some() {
        message.push_str(&format!("; {correlated_again} account(s) correlated again"));
    }
    if !warnings.is_empty() {
        message.push_str(&format!(
            "; {} warning(s): {}",
            warnings.len(),
            warnings.join("; ")
        ));
    }
    Ok(TaskOutcome {
        // Unchanged results are `no_changes` even when they carry warnings (the message keeps
        // them): a persistent data condition must not make every run look eventful.
        // The scope a dirty run hands to the orders task is bookkeeping, not a result.
        status: if !rc.dry_run && committed_now.names.iter().all(|n| n == super::dirty::TABLE) {
            TaskStatus::NoChanges
        } else if !warnings.is_empty() {
            TaskStatus::Warning
        } else {
            TaskStatus::Succeeded
        },
        rows_read: 0,
        rows_written: written,
        changes: assigned,
        message,
        exit_code: 0,
    })
}

/// The assigned roles of `plan` ([`assigned_roles`]), one row per (owner_key, role, origin),
/// sorted on all their columns and decoded.
///
/// Sorted here, before the larger tables are computed, rather than beside them, on all
/// cores. A row per (owner_key, role, origin), the leading columns: sorted on all its columns
/// by the rank sort ([`engine::sorted_distinct_on`]), the rows come in the same order as
/// sorted on those three, and none is dropped as a repeat. Decoded once here: the queries
/// after scan the roles several times.
async fn sorted_roles(ctx: &SessionContext, plan: DataFrame) -> Result<DataFrame> {
    let threads = crate::engine::threads();
    let (encoded, batches) = crate::engine::sorted_distinct_on(ctx, plan, threads).await?;
    let schema = crate::engine::decoded_schema(&encoded);
    let per_thread = batches.len().div_ceil(threads).max(1);
    let batches = crate::engine::on_threads(batches.chunks(per_thread), |part| {
        part.iter()
            .map(|b| crate::engine::cast_batch(b, &schema))
            .collect::<datafusion::error::Result<Vec<_>>>()
    })
    .into_iter()
    .collect::<datafusion::error::Result<Vec<_>>>()?
    .concat();
    super::frames::frame(ctx, &schema, &batches)
}

/// A spawned task, aborted when dropped unjoined (a task failing before it joins its
/// helper stops the helper too).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn join(mut self) -> T {
        let joined = (&mut self.0).await;
        match joined {
            Ok(out) => out,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("invariant: a joined helper task is not cancelled: {e}"),
        }
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// (linked, ambiguous, conflicts) of each resource type's correlations, in one pass.
async fn status_counts(df: DataFrame) -> Result<HashMap<String, (i64, i64, i64)>> {
    use datafusion::functions_aggregate::expr_fn::sum;
    let count_if = |e: Expr| sum(when(e, lit(1i64)).otherwise(lit(0i64)).unwrap_or(lit(0i64)));
    let batches = df
        .aggregate(
            vec![cast(col("resource_type"), DataType::Utf8).alias("resource_type")],
            vec![
                count_if(col("status").eq(lit("linked"))).alias("linked"),
                count_if(col("status").eq(lit("ambiguous"))).alias("ambiguous"),
                count_if(col("conflict").is_true()).alias("conflicts"),
            ],
        )?
        .collect()
        .await?;
    let mut out = HashMap::new();
    for b in &batches {
        let rt = text_column(b, "resource_type");
        let number = |name: &str, i: usize| -> i64 {
            b.column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
                .map(|a| if a.is_null(i) { 0 } else { a.value(i) })
                .unwrap_or(0)
        };
        for i in 0..b.num_rows() {
            out.insert(
                rt.value(i).to_string(),
                (
                    number("linked", i),
                    number("ambiguous", i),
                    number("conflicts", i),
                ),
            );
        }
    }
    Ok(out)
}

fn text_column<'a>(b: &'a RecordBatch, name: &str) -> &'a StringArray {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .expect("invariant: a text column of igaflow's own query")
}

/// Registers `df` as view `name` (replacing an earlier one).
pub fn view(ctx: &SessionContext, name: &str, df: DataFrame) -> Result<()> {
    let _ = ctx.deregister_table(name)?;
    ctx.register_table(name, df.into_view())?;
    Ok(())
}

pub fn union_all(frames: Vec<DataFrame>) -> Result<Option<DataFrame>> {
    let mut out: Option<DataFrame> = None;
    for f in frames {
        out = Some(match out {
            None => f,
            Some(a) => a.union(f)?,
        });
    }
    Ok(out)
}

fn or_empty(ctx: &SessionContext, df: Option<DataFrame>, schema: Arc<Schema>) -> Result<DataFrame> {
    match df {
        Some(df) => Ok(df),
        None => empty(ctx, schema),
    }
}

pub fn empty(ctx: &SessionContext, schema: Arc<Schema>) -> Result<DataFrame> {
    Ok(ctx.read_batch(RecordBatch::new_empty(schema))?)
}

/// Runs `df` once and returns a frame over the result (so later joins do not recompute it).
///
/// At trace level (`IGAFLOW_LOG=igaflow::plans=trace`) the executed plan is logged with its
/// metrics (rows, time and pruning per operator), as EXPLAIN ANALYZE shows them.
pub async fn materialize(ctx: &SessionContext, df: DataFrame) -> Result<DataFrame> {
    let schema = Arc::new(df.schema().as_arrow().clone());
    let batches = if tracing::enabled!(target: "igaflow::plans", tracing::Level::TRACE) {
        let task = df.task_ctx();
        let plan = df.create_physical_plan().await?;
        let batches = datafusion::physical_plan::collect(plan.clone(), Arc::new(task)).await?;
        let shown = datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(
            plan.as_ref(),
        )
        .indent(true)
        .to_string();
        tracing::trace!(target: "igaflow::plans", "executed plan:\n{shown}");
        batches
    } else {
        df.collect().await?
    };
    super::frames::frame(ctx, &schema, &batches)
}

/// [`materialize`], the rows kept in the order `df` gives them (on one partition).
async fn materialize_in_order(ctx: &SessionContext, df: DataFrame) -> Result<DataFrame> {
    let (schema, batches) = engine::collect_in_order(ctx, df).await?;
    super::frames::frame(ctx, &schema, &batches)
}

fn utf8(names: &[&str]) -> Arc<Schema> {
    Arc::new(Schema::new(
        names
            .iter()
            .map(|n| Field::new(*n, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ))
}

fn correlations_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("resource_type", DataType::Utf8, true),
        Field::new("account_key", DataType::Utf8, true),
        Field::new("owner_key", DataType::Utf8, true),
        Field::new("rule", DataType::Int64, true),
        Field::new("status", DataType::Utf8, true),
        Field::new("conflict", DataType::Boolean, true),
    ]))
}
/// The columns of `assigned_resources`: the resource type, the owner, the correlated account,
/// the state, then one column per scalar name of the pipeline's resource types (in
/// configuration order, each name once) holding the desired value as text of the target
/// column's type, NULL for a resource type without that scalar.
const RESOURCE_COLUMNS: [&str; 4] = ["resource_type", "owner_key", "account_key", "state"];

fn scalar_columns<'a>(rc: &RunContext<'a>) -> Vec<&'a str> {
    let mut names: Vec<&str> = Vec::new();
    for rt in &rc.pipeline.model.resource_types {
        for (name, _) in &rt.scalars {
            if !RESOURCE_COLUMNS.contains(&name.as_str()) && !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
    }
    names
}

fn resources_schema(rc: &RunContext<'_>) -> Arc<Schema> {
    let mut names = RESOURCE_COLUMNS.to_vec();
    names.extend(scalar_columns(rc));
    utf8(&names)
}

/// The column of a scalar's value in the spread frame of [`desired_scalars`] (apart from the
/// names of `assigned_resources`' own columns, which a scalar may take too).
fn spread_name(scalar: &str) -> String {
    format!("_spread_{scalar}")
}

/// One resource type's `assigned_resources` rows: `res` with the desired scalar values
/// (`spread`: `_spread_owner`, then one column per scalar of the resource type) in the
/// pipeline's scalar columns.
fn with_scalar_columns(
    rc: &RunContext<'_>,
    rt: &ResourceType,
    res: DataFrame,
    spread: Option<DataFrame>,
) -> Result<DataFrame> {
    let spread = spread.filter(|_| !rt.scalars.is_empty());
    let columns = resource_columns(rc, rt, spread.is_some());
    let Some(spread) = spread else {
        return Ok(res.select(columns)?);
    };
    spread_onto(res, spread, columns)
}

/// `res` joined to the spread scalars (on its probe side, whose order the rows keep),
/// selected as `columns` ([`resource_columns`]).
fn spread_onto(res: DataFrame, spread: DataFrame, columns: Vec<Expr>) -> Result<DataFrame> {
    Ok(res
        .join(
            spread,
            JoinType::Left,
            &["owner_key"],
            &["_spread_owner"],
            None,
        )?
        .select(columns)?)
}

/// The columns of [`with_scalar_columns`]' rows: the fixed ones, then each scalar column of
/// the pipeline from the spread frame (`spread`) when the resource type has that scalar, else
/// NULL.
fn resource_columns(rc: &RunContext<'_>, rt: &ResourceType, spread: bool) -> Vec<Expr> {
    let mut columns = vec![
        lit(rt.name.as_str()).alias("resource_type"),
        col("owner_key"),
        col("account_key"),
        col("state"),
    ];
    let null = || cast(lit(datafusion::common::ScalarValue::Null), DataType::Utf8);
    columns.extend(scalar_columns(rc).into_iter().map(|n| {
        if spread && rt.scalars.iter().any(|(name, _)| name == n) {
            ident(spread_name(n)).alias(n)
        } else {
            null().alias(n)
        }
    }));
    columns
}
fn scalars_schema() -> Arc<Schema> {
    utf8(&["resource_type", "owner_key", "attribute", "value"])
}
/// `assigned_links` as [`desired_links`] computes it: all but the owner key dictionary-encoded
/// (a few resource types, links and values over millions of rows), each row's values picked
/// as keys into the configuration's, not copied, then sorted by ranks of the dictionaries'
/// values (`engine::sorted_distinct`) and stored as plain text.
fn links_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("resource_type", text_dictionary(), true),
        Field::new("owner_key", DataType::Utf8, true),
        Field::new("link", text_dictionary(), true),
        Field::new("value", text_dictionary(), true),
    ]))
}

/// When a task works on some resource types only, the other types' rows stay as they were.
async fn merge_other_types(
    ctx: &SessionContext,
    catalog: &Catalog,
    table: &str,
    new: DataFrame,
    rts: &[&ResourceType],
) -> Result<DataFrame> {
    let schema = Arc::new(new.schema().as_arrow().clone());
    match other_types_rows(ctx, catalog, table, rts, &schema).await? {
        Some(old) => Ok(old.union(new)?),
        None => Ok(new),
    }
}

/// The committed rows of `table` whose resource type is not one of `rts` (`None` before the
/// table's first commit).
async fn other_types_rows(
    ctx: &SessionContext,
    catalog: &Catalog,
    table: &str,
    rts: &[&ResourceType],
    schema: &Arc<Schema>,
) -> Result<Option<DataFrame>> {
    if !catalog.tables.contains_key(table) {
        return Ok(None);
    }
    let names: Vec<Expr> = rts.iter().map(|rt| lit(rt.name.as_str())).collect();
    Ok(Some(
        super::frames::committed(ctx, catalog, table, schema)
            .await?
            .filter(col("resource_type").in_list(names, true))?,
    ))
}

/// A role-model table's next content: whole (complete mode), or the committed table with the
/// recomputed owners' rows replaced (dirty mode).
enum Merged {
    Whole(DataFrame),
    /// Whole, and already in the table's order.
    Sorted(DataFrame),
    Replaced(Box<Replacement>),
}

impl Merged {
    /// The same rows, their joins built on the sides the plans name ([`engine::as_written`]).
    fn with_joins_as_written(self) -> Self {
        match self {
            Merged::Whole(df) => Merged::Whole(engine::as_written(df)),
            Merged::Sorted(df) => Merged::Sorted(engine::as_written(df)),
            Merged::Replaced(mut r) => {
                r.new = engine::as_written(r.new);
                Merged::Replaced(r)
            }
        }
    }

    /// The table, sorted by `order` (each distinct row once with `distinct`, `order` then
    /// naming every column in schema order).
    async fn table(
        self,
        rc: &RunContext<'_>,
        read: &Catalog,
        ctx: &SessionContext,
        name: &str,
        order: &[&str],
        distinct: bool,
    ) -> Result<NewTable> {
        let started = std::time::Instant::now();
        let table = match self {
            // One partition: a collected in-memory table is split in two and interleaved.
            Merged::Sorted(df) => NewTable::in_order(ctx, name, df).await?,
            Merged::Whole(df) if distinct => NewTable::sorted_distinct(ctx, name, df).await?,
            Merged::Whole(df) => {
                let order = order.iter().map(|c| col(*c).sort(true, true)).collect();
                NewTable::from_frame(name, df.sort(order)?).await?
            }
            Merged::Replaced(r) => {
                NewTable::replaced(rc, read, ctx, name, *r, order, distinct).await?
            }
        };
        tracing::debug!(
            table = name,
            rows = table.rows(),
            seconds = format!("{:.3}", started.elapsed().as_secs_f64()),
            "role model table"
        );
        Ok(table)
    }
}

/// Like [`merge_other_types`], and with a dirty owner set the rows of other owners of the same
/// resource types stay too: only the recomputed owners' rows are replaced.
async fn merge_scoped(
    ctx: &SessionContext,
    catalog: &Catalog,
    table: &str,
    new: DataFrame,
    rts: &[&ResourceType],
    dirty: Option<&DataFrame>,
) -> Result<Merged> {
    let Some(d) = dirty else {
        return Ok(Merged::Whole(
            merge_other_types(ctx, catalog, table, new, rts).await?,
        ));
    };
    if !catalog.tables.contains_key(table) {
        return Ok(Merged::Whole(new));
    }
    let mut keys = Vec::new();
    for rt in rts {
        keys.push(
            d.clone()
                .filter(col("entity").eq(lit(rt.owner.as_str())))?
                .select(vec![lit(rt.name.as_str()).alias("_rt"), col("key")])?,
        );
    }
    let schema = Arc::new(new.schema().as_arrow().clone());
    let old = super::frames::committed(ctx, catalog, table, &schema).await?;
    let Some(keys) = union_all(keys)? else {
        return Ok(Merged::Whole(old.union(new)?));
    };
    Ok(Merged::Replaced(Box::new(Replacement {
        old,
        keys,
        on: vec!["resource_type", "owner_key"],
        new,
        differs: false,
    })))
}

/// The owners a dirty role model recomputes: the changed owners, the owners (before and after)
/// of changed accounts, every owner whose correlation changed, and the owners in review or
/// candidates of an unsettled account. `entity`, `key`.
async fn widen(
    ctx: &SessionContext,
    catalog: &Catalog,
    rts: &[&ResourceType],
    scope: &super::dirty::Scope,
) -> Result<DataFrame> {
    let mut frames = vec![scope.owners.clone()];
    let new = ctx.table("correlations_new").await?;
    let old = if catalog.tables.contains_key("correlations") {
        Some(ctx.table("correlations").await?)
    } else {
        None
    };
    for rt in rts {
        let owner = lit(rt.owner.as_str());
        let of_rt = |df: DataFrame| df.filter(col("resource_type").eq(lit(rt.name.as_str())));
        let touched = scope
            .accounts
            .clone()
            .filter(col("entity").eq(lit(rt.target.as_str())))?
            .select(vec![col("key").alias("_a")])?;
        let owners_of = |df: DataFrame| -> Result<DataFrame> {
            Ok(df.filter(col("owner_key").is_not_null())?.select(vec![
                owner.clone().alias("entity"),
                col("owner_key").alias("key"),
            ])?)
        };
        let cols: Vec<Expr> = ["account_key", "owner_key", "rule", "status", "conflict"]
            .iter()
            .map(|c| col(*c))
            .collect();
        let new_rt = of_rt(new.clone())?.select(cols.clone())?;
        frames.push(owners_of(touched.clone().join(
            new_rt.clone(),
            JoinType::RightSemi,
            &["_a"],
            &["account_key"],
            None,
        )?)?);
        if let Some(old) = &old {
            let old_rt = of_rt(old.clone())?.select(cols)?;
            frames.push(owners_of(touched.join(
                old_rt.clone(),
                JoinType::RightSemi,
                &["_a"],
                &["account_key"],
                None,
            )?)?);
            frames.push(owners_of(of_rt(ctx.table("correlations_changed").await?)?)?);
        } else {
            frames.push(owners_of(new_rt)?);
        }
        frames.push(
            ctx.table(format!("rt_candidates__{}", rt.name))
                .await?
                .select(vec![
                    owner.clone().alias("entity"),
                    col("owner_key").alias("key"),
                ])?,
        );
        if catalog.tables.contains_key("assigned_resources") {
            frames.push(owners_of(
                of_rt(ctx.table("assigned_resources").await?)?
                    .filter(col("state").eq(lit("review")))?,
            )?);
        }
    }
    Ok(union_all(frames)?
        .expect("at least the changed owners")
        .distinct()?)
}

/// The owner key of an entity table as text.
fn key_text(rc: &RunContext<'_>, entity: &str) -> Expr {
    let e = rc.pipeline.entity(entity).expect("invariant: validated");
    cast(quoted(&e.key), DataType::Utf8)
}

/// `(owner_key, <name_col>)` for every row of `table` where each named rule holds: one scan,
/// every rule evaluated on each batch, the positions of the rules that hold unnested and
/// joined to their names.
pub fn rule_hits(
    ctx: &SessionContext,
    table: DataFrame,
    key: Expr,
    rules: &[(String, &ConfigExpr)],
    name_col: &str,
) -> Result<DataFrame> {
    if rules.is_empty() {
        return empty(ctx, utf8(&["owner_key", name_col]));
    }
    let mut conds = Vec::with_capacity(rules.len());
    for (_, rule) in rules {
        conds.push(ctx.parse_sql_expr(&rule.text, table.schema())?);
    }
    let texts: Vec<String> = rules.iter().map(|(_, r)| r.text.clone()).collect();
    let hits = match planned_rules(ctx, &table, &conds, &texts, true) {
        Ok(hits) => hits,
        // A rule whose function or operator does not take a dictionary: over the columns as
        // they are.
        Err(_) => planned_rules(ctx, &table, &conds, &texts, false)?,
    };
    let names = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("_position", DataType::Int32, false),
            Field::new(name_col, DataType::Utf8, false),
        ])),
        vec![
            Arc::new(Int32Array::from_iter_values(0..rules.len() as i32)),
            Arc::new(StringArray::from_iter_values(
                rules.iter().map(|(n, _)| n.as_str()),
            )),
        ],
    )
    .map_err(DataFusionError::from)?;
    Ok(table
        .select(vec![key.alias("owner_key"), hits.alias("_hits")])?
        .unnest_columns(&["_hits"])?
        .join(
            ctx.read_batch(names)?,
            JoinType::Inner,
            &["_hits"],
            &["_position"],
            None,
        )?
        .select(vec![col("owner_key"), col(name_col)])?)
}

/// The call of [`engine::rule_positions_udf`] that evaluates `conds` (parsed over `table`,
/// with their `texts`) over the columns of `table` they name, each text column
/// dictionary-encoded when `encode`. A rule compares a few text columns of few distinct values
/// (a department, a status) with literals, hundreds of rules over every owner: over a
/// dictionary each comparison runs once per distinct value and the rows take its result by
/// their keys, and a filter of the batch (see the module of `rule_positions`) moves their
/// integer keys, not their strings. The rules' results are the same: a dictionary column
/// holds the same values.
fn planned_rules(
    ctx: &SessionContext,
    table: &DataFrame,
    conds: &[Expr],
    texts: &[String],
    encode: bool,
) -> Result<Expr> {
    use datafusion::common::Column;
    use datafusion::common::tree_node::{Transformed, TreeNode};
    let named: BTreeSet<&str> = conds
        .iter()
        .flat_map(|c| c.column_refs())
        .map(|c| c.name.as_str())
        .collect();
    // The function's arguments, and the same aliased as the columns the rules are planned
    // over.
    let (mut args, mut columns) = (Vec::new(), Vec::new());
    for (qualifier, field) in table.schema().iter() {
        if !named.contains(field.name().as_str()) {
            continue;
        }
        let value = Expr::Column(Column::new(qualifier.cloned(), field.name()));
        let value = match field.data_type() {
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 if encode => cast(
                value,
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            ),
            _ => value,
        };
        columns.push(value.clone().alias(field.name()));
        args.push(value);
    }
    let narrowed = table.clone().select(columns)?;
    let simplifier = datafusion::optimizer::simplify_expressions::ExprSimplifier::new(
        datafusion::logical_expr::simplify::SimplifyContext::builder()
            .with_schema(Arc::new(narrowed.schema().clone()))
            .with_config_options(Arc::clone(ctx.copied_config().options()))
            .build(),
    );
    let mut rules = Vec::with_capacity(conds.len());
    for cond in conds {
        // Over the narrowed columns, which have no qualifier.
        let cond = cond
            .clone()
            .transform(|e| {
                Ok(match e {
                    Expr::Column(c) => {
                        Transformed::yes(Expr::Column(Column::new_unqualified(c.name)))
                    }
                    e => Transformed::no(e),
                })
            })?
            .data;
        // Simplified as the optimizer would (some functions, such as `coalesce`, only run
        // as what they simplify to), then planned.
        let cond = simplifier.simplify(simplifier.coerce(cond, narrowed.schema())?)?;
        rules.push(ctx.create_physical_expr(cond, narrowed.schema())?);
    }
    let udf = engine::rule_positions_udf(
        Arc::new(narrowed.schema().as_arrow().clone()),
        rules,
        texts.to_vec(),
    );
    // The first argument is there for a rule that names no column: a function needs one.
    let mut call = vec![lit(true)];
    call.extend(args);
    Ok(udf.call(call))
}

/// The `correlation_keys` the committed correlations were computed from: the version the
/// role model of the watermark run `since` read when it started (registered as
/// `correlation_keys_before`), cut to the rows whose key is one of `owners` (the scope's
/// changed owners, `entity` and `key`). `None` (then every account is correlated again) when
/// that cannot be told or read: no role model start recorded, role models of that run that read different
/// versions, or a version an anonymization has removed (below the table's floor: it scrubs
/// the keys after the role model of its run).
async fn keys_before(
    rc: &RunContext<'_>,
    ctx: &SessionContext,
    catalog: &Catalog,
    since: &str,
    owners: &DataFrame,
) -> Result<Option<DataFrame>> {
    if since.is_empty() || !catalog.tables.contains_key("task_runs") {
        return Ok(None);
    }
    let starts = ctx
        .table("task_runs")
        .await?
        .filter(
            col("run_id")
                .eq(lit(since))
                .and(col("type").eq(lit("compute_role_model"))),
        )?
        .select(vec![cast(col("started_at"), DataType::Int64).alias("at")])?
        .collect()
        .await?;
    let mut version: Option<u64> = None;
    for b in &starts {
        let at = b.column(0).as_any().downcast_ref::<Int64Array>();
        for i in 0..b.num_rows() {
            let Some(start) = at
                .filter(|a| !a.is_null(i))
                .and_then(|a| chrono::DateTime::from_timestamp_micros(a.value(i)))
            else {
                return Ok(None);
            };
            let read = match rc.store.catalog_at(start).await? {
                Some(c) => c.tables.get(correlation_keys::TABLE).copied(),
                None => None,
            };
            match (read, version) {
                (None, _) => return Ok(None),
                (Some(r), Some(v)) if r != v => return Ok(None),
                (Some(r), _) => version = Some(r),
            }
        }
    }
    let Some(version) = version else {
        return Ok(None);
    };
    if catalog
        .floors
        .get(correlation_keys::TABLE)
        .is_some_and(|&floor| version < floor)
    {
        return Ok(None);
    }
    let then = Catalog {
        tables: [(correlation_keys::TABLE.to_string(), version)].into(),
        ..Default::default()
    };
    let Ok(Some(provider)) = rc.store.provider(ctx, &then, correlation_keys::TABLE).await else {
        return Ok(None);
    };
    let name = "correlation_keys_before";
    let _ = ctx.deregister_table(name)?;
    ctx.register_table(name, provider)?;
    // Only the changed owners' rows, found by key in that version.
    let keys = owners
        .clone()
        .select(vec![col("key").alias("k")])?
        .distinct()?;
    let table = ctx.table(name).await?;
    let found =
        super::dirty::keyed(rc, ctx, &then, correlation_keys::TABLE, table, "key", &keys).await?;
    Ok(Some(found))
}

/// The committed correlations of `rt`'s accounts that are not correlated again (`accounts`, a
/// frame of `k`).
fn not_correlated_again(
    committed: DataFrame,
    rt: &ResourceType,
    accounts: &DataFrame,
) -> Result<DataFrame> {
    Ok(committed
        .filter(col("resource_type").eq(lit(rt.name.as_str())))?
        .join(
            accounts.clone(),
            JoinType::LeftAnti,
            &["account_key"],
            &["k"],
            None,
        )?)
}

/// One resource type's rows of `correlation_keys`, each side (`key`, `rule`, `value`), read
/// once for a dirty role model: finding the affected accounts and correlating them join each
/// side three times, and at 1M identities each read of a side decodes 2M keys and values
/// again (0.2-0.3 s) to keep a few thousand rows.
struct KeySlices {
    owner: DataFrame,
    target: DataFrame,
}

impl KeySlices {
    async fn read(ctx: &SessionContext, rt: &ResourceType) -> Result<Self> {
        let all = ctx.table(correlation_keys::TABLE).await?;
        let side = |side: &str| -> Result<DataFrame> {
            Ok(all
                .clone()
                .filter(
                    col("resource_type")
                        .eq(lit(rt.name.as_str()))
                        .and(col("side").eq(lit(side))),
                )?
                .select(vec![col("key"), col("rule"), col("value")])?)
        };
        let (owner, target) = futures::try_join!(
            materialize(ctx, side("owner")?),
            materialize(ctx, side("target")?)
        )?;
        Ok(Self { owner, target })
    }
}

/// The accounts of one resource type whose correlation may differ from the committed one, as
/// a frame of `k` (SPEC 11.1–11.4 read backwards):
/// - the changed accounts;
/// - the accounts sharing a rule value with a changed owner, before or now (an owner that
///   gains or loses a value changes what each rule finds for them);
/// - the accounts committed as linked, suggested or duplicate to a changed owner, and every
///   ambiguous or conflicting one;
/// - then every account committed with an owner of those accounts, before or now: an owner
///   keeps one linked account, so they are ranked again together.
///
/// Every other account finds the same owners with the same rules as before, and no account
/// of another owner competes with it.
async fn affected_accounts(
    ctx: &SessionContext,
    rt: &ResourceType,
    scope: &super::dirty::Scope,
    before: DataFrame,
    now: &KeySlices,
    phases: &mut super::Phases,
) -> Result<DataFrame> {
    let before = before
        .filter(
            col("resource_type")
                .eq(lit(rt.name.as_str()))
                .and(col("side").eq(lit("owner"))),
        )?
        .select(vec![col("key"), col("rule"), col("value")])?;
    let changed_owners = scope
        .owners
        .clone()
        .filter(col("entity").eq(lit(rt.owner.as_str())))?
        .select(vec![col("key").alias("k")])?;
    let owner_values = |keys: DataFrame| -> Result<DataFrame> {
        keys.semi_on("key", changed_owners.clone())?
            .select(vec![
                col("rule").alias("_rule"),
                col("value").alias("_value"),
            ])
            .map_err(Into::into)
    };
    let values = materialize(
        ctx,
        owner_values(now.owner.clone())?
            .union(owner_values(before)?)?
            .distinct()?,
    )
    .await?;
    phases.done("affected: values");
    let targets = now.target.clone();
    let committed = ctx
        .table("correlations")
        .await?
        .filter(col("resource_type").eq(lit(rt.name.as_str())))?;
    let first = vec![
        scope
            .accounts
            .clone()
            .filter(col("entity").eq(lit(rt.target.as_str())))?
            .select(vec![col("key").alias("k")])?,
        values
            .join(
                targets.clone(),
                JoinType::Inner,
                &["_rule", "_value"],
                &["rule", "value"],
                None,
            )?
            .select(vec![col("key").alias("k")])?,
        committed
            .clone()
            .semi_on("owner_key", changed_owners)?
            .select(vec![col("account_key").alias("k")])?,
        committed
            .clone()
            .filter(col("status").eq(lit("ambiguous")).or(col("conflict")))?
            .select(vec![col("account_key").alias("k")])?,
    ];
    let first = materialize(ctx, union_all(first)?.expect("four").distinct()?).await?;
    phases.done("affected: first");
    // Their owners, committed and found now (every owner a rule of theirs finds).
    // As written: the statistics make the owner keys (2M rows at 1M identities) look like
    // the smaller side of the inner join below, built on the found values' 11K rows instead.
    let owners = committed
        .clone()
        .semi_on("account_key", first.clone())?
        .filter(col("owner_key").is_not_null())?
        .select(vec![col("owner_key").alias("k")])?
        .union(
            targets
                .semi_on("key", first.clone())?
                .select(vec![
                    col("rule").alias("_rule"),
                    col("value").alias("_value"),
                ])?
                .join(
                    now.owner.clone(),
                    JoinType::Inner,
                    &["_rule", "_value"],
                    &["rule", "value"],
                    None,
                )?
                .select(vec![col("key").alias("k")])?,
        )?
        .distinct()?;
    let owners = materialize(ctx, engine::as_written(owners)).await?;
    phases.done("affected: owners");
    Ok(first
        .union(
            committed
                .semi_on("owner_key", owners)?
                .select(vec![col("account_key").alias("k")])?,
        )?
        .distinct()?)
}

async fn correlate(
    rc: &RunContext<'_>,
    ctx: &SessionContext,
    catalog: &Catalog,
    rt: &ResourceType,
    affected: Option<&DataFrame>,
    slices: Option<KeySlices>,
) -> Result<DataFrame> {
    // Dirty: only the affected accounts (a frame of `k`), against every owner.
    let only_affected = |df: DataFrame| -> Result<DataFrame> {
        match affected {
            Some(a) => df.semi_on("account_key", a.clone()),
            None => Ok(df),
        }
    };
    let target = require(ctx, catalog, &rt.target, "synchronize").await?;
    view(
        ctx,
        "corr_targets",
        only_affected(target.select(vec![key_text(rc, &rt.target).alias("account_key")])?)?,
    )?;
    let (owner_keys, target_keys) = match slices {
        Some(s) => (s.owner, s.target),
        None if rt.correlation.is_empty() => {
            let none = empty(ctx, utf8(&["key", "value"]))?.select(vec![
                col("key"),
                cast(lit(0i64), DataType::Int64).alias("rule"),
                col("value"),
            ])?;
            (none.clone(), none)
        }
        None => {
            let keys = require(
                ctx,
                catalog,
                correlation_keys::TABLE,
                "compute_correlation_keys",
            )
            .await?
            .filter(col("resource_type").eq(lit(rt.name.as_str())))?;
            let side = |side: &str| -> Result<DataFrame> {
                Ok(keys
                    .clone()
                    .filter(col("side").eq(lit(side)))?
                    .select(vec![col("key"), col("rule"), col("value")])?)
            };
            (side("owner")?, side("target")?)
        }
    };
    let target_keys = only_affected(target_keys.select(vec![
        col("key").alias("account_key"),
        col("rule"),
        col("value"),
    ])?)?;
    let target_keys = match affected {
        // Collected, so that the joins know the few rows and build on them.
        Some(_) => materialize(ctx, target_keys).await?,
        None => target_keys,
    };
    view(ctx, "corr_target_keys", target_keys)?;
    view(
        ctx,
        "corr_owner_keys",
        owner_keys.select(vec![
            col("key").alias("owner_key"),
            col("rule"),
            col("value"),
        ])?,
    )?;
    let rules = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("rule", DataType::Int64, false),
            Field::new("confidence", DataType::Int64, false),
        ])),
        vec![
            Arc::new(Int64Array::from_iter_values(
                rt.correlation.iter().map(|r| r.number),
            )),
            Arc::new(Int64Array::from_iter_values(
                rt.correlation.iter().map(|r| r.confidence),
            )),
        ],
    )
    .map_err(DataFusionError::from)?;
    view(ctx, "corr_rules", ctx.read_batch(rules)?)?;
    let previous = if catalog.tables.contains_key("correlations") {
        let previous = ctx
            .table("correlations")
            .await?
            .filter(
                col("resource_type")
                    .eq(lit(rt.name.as_str()))
                    .and(col("status").eq(lit("linked"))),
            )?
            .select(vec![col("account_key"), col("owner_key"), col("rule")])?;
        only_affected(previous)?
    } else {
        empty(ctx, correlations_schema())?.select(vec![
            col("account_key"),
            col("owner_key"),
            col("rule"),
        ])?
    };
    view(ctx, "corr_previous", previous)?;
    let found = ctx.table("corr_target_keys").await?.join(
        ctx.table("corr_owner_keys").await?,
        JoinType::Inner,
        &["rule", "value"],
        &["rule", "value"],
        None,
    )?;
    let found = materialize(
        ctx,
        found.select(vec![
            col("account_key"),
            col("corr_target_keys.rule").alias("rule"),
            col("owner_key"),
        ])?,
    )
    .await?;
    view(ctx, "corr_found", found.clone())?;
    view(
        ctx,
        "corr_shared",
        materialize(ctx, several(found, &["account_key", "rule"])?).await?,
    )?;
    let matches = materialize(ctx, ctx.sql(MATCHES_SQL).await?).await?;
    view(ctx, "corr_matches", matches)?;
    // Computed once: the duplicate rule reads it twice (owners' kept accounts, every account).
    let proposed = materialize(ctx, ctx.sql(PROPOSED_SQL).await?).await?;
    view(ctx, "corr_proposed", proposed.clone())?;
    let linked = proposed.filter(col("status").eq(lit("linked")))?;
    view(
        ctx,
        "corr_linked_twice",
        materialize(ctx, several(linked, &["owner_key"])?).await?,
    )?;
    let result = ctx.sql(CORRELATIONS_SQL).await?;
    let result = materialize(ctx, result).await?;
    view(ctx, "rt_correlations", result.clone())?;
    // Collected: at 1M accounts the join otherwise built its hash table on the 2M target keys
    // (0.7 s, after reading them) to probe it with no ambiguous account at all.
    let ambiguous = result
        .clone()
        .filter(col("status").eq(lit("ambiguous")))?
        .select(vec![col("account_key")])?;
    view(ctx, "corr_ambiguous", materialize(ctx, ambiguous).await?)?;
    let mut candidates = ctx.sql(CANDIDATES_SQL).await?;
    if let Some(a) = affected {
        // The candidates of the accounts not correlated again are as committed: each
        // ambiguous account is affected, so those are the suggested and duplicate ones.
        candidates = candidates.union(
            not_correlated_again(ctx.table("correlations").await?, rt, a)?
                .filter(
                    col("status")
                        .in_list(vec![lit("suggested"), lit("duplicate")], false)
                        .and(col("owner_key").is_not_null()),
                )?
                .select(vec![col("owner_key")])?,
        )?;
    }
    let candidates = materialize(ctx, candidates).await?;
    view(ctx, &format!("rt_candidates__{}", rt.name), candidates)?;
    // The matching's views are this function's: their collected rows go with them (the next
    // resource type's would replace them, the last type's stayed to the task's end).
    for v in [
        "corr_targets",
        "corr_target_keys",
        "corr_owner_keys",
        "corr_rules",
        "corr_previous",
        "corr_found",
        "corr_shared",
        "corr_matches",
        "corr_linked_twice",
        "corr_proposed",
        "rt_correlations",
        "corr_ambiguous",
    ] {
        ctx.deregister_table(v)?;
    }
    Ok(result.select(vec![
        lit(rt.name.as_str()).alias("resource_type"),
        col("account_key"),
        col("owner_key"),
        col("rule"),
        col("status"),
        col("conflict"),
    ])?)
}

/// The values of `keys` that more than one row of `df` holds (`keys` only): a count per value,
/// the cheap grouping, where the few values it finds are then looked at again.
fn several(df: DataFrame, keys: &[&str]) -> Result<DataFrame> {
    use datafusion::functions_aggregate::count::count;
    let columns: Vec<Expr> = keys.iter().map(|k| col(*k)).collect();
    Ok(df
        .aggregate(columns.clone(), vec![count(lit(1)).alias("_rows")])?
        .filter(col("_rows").gt(lit(1i64)))?
        .select(columns)?)
}

/// The committed rows of owner entity `entity` whose key is among the dirty owners `dirty`
/// (`entity`, `key`; a role model's session has one such set), collected once per session: the
/// roles and each resource type read them, several times each, and at 1M identities every read
/// of the cut table scanned the million owners again. A text key is looked up in the store
/// ([`super::dirty::keyed`]).
async fn dirty_owner_rows(
    rc: &RunContext<'_>,
    ctx: &SessionContext,
    catalog: &Catalog,
    entity: &str,
    dirty: &DataFrame,
) -> Result<DataFrame> {
    let name = format!("dirty_owner_rows__{entity}");
    if ctx.table_exist(name.as_str())? {
        return Ok(ctx.table(name.as_str()).await?);
    }
    let table = require(ctx, catalog, entity, "synchronize").await?;
    let e = rc.pipeline.entity(entity).expect("invariant: validated");
    let rows = match super::dirty::text_column(&table, &e.key) {
        true => {
            let keys = dirty
                .clone()
                .filter(col("entity").eq(lit(entity)))?
                .select(vec![col("key").alias("k")])?
                .distinct()?;
            super::dirty::keyed(rc, ctx, catalog, entity, table, &e.key, &keys).await?
        }
        false => super::dirty::restrict(table, quoted(&e.key), entity, dirty)?,
    };
    let rows = materialize(ctx, rows).await?;
    view(ctx, &name, rows.clone())?;
    Ok(rows)
}

/// Assigned roles and the warnings of manual assignments.
async fn assigned_roles(
    rc: &RunContext<'_>,
    ctx: &SessionContext,
    catalog: &Catalog,
    dirty: Option<&DataFrame>,
) -> Result<(DataFrame, Vec<String>)> {
    let model = &rc.pipeline.model;
    let mut warnings = Vec::new();
    let owners: BTreeSet<&str> = model
        .roles
        .iter()
        .map(|r| r.owner.as_str())
        .chain(model.composite_roles.iter().map(|r| r.owner.as_str()))
        .collect();

    let mut rule_frames = Vec::new();
    let mut composite_frames = Vec::new();
    let mut known = Vec::new();
    for owner in &owners {
        let table = match dirty {
            Some(d) => dirty_owner_rows(rc, ctx, catalog, owner, d).await?,
            None => require(ctx, catalog, owner, "synchronize").await?,
        };
        known.push(
            table
                .clone()
                .select(vec![key_text(rc, owner).alias("owner_key")])?,
        );
        let singles: Vec<(String, &ConfigExpr)> = model
            .roles
            .iter()
            .filter(|r| r.owner == *owner)
            .filter_map(|r| r.rule.as_ref().map(|e| (r.name.clone(), e)))
            .collect();
        rule_frames.push(rule_hits(
            ctx,
            table.clone(),
            key_text(rc, owner),
            &singles,
            "role",
        )?);
        let composites: Vec<(String, &ConfigExpr)> = model
            .composite_roles
            .iter()
            .filter(|r| r.owner == *owner)
            .filter_map(|r| r.rule.as_ref().map(|e| (r.name.clone(), e)))
            .collect();
        composite_frames.push(rule_hits(
            ctx,
            table,
            key_text(rc, owner),
            &composites,
            "composite",
        )?);
    }
    view(
        ctx,
        "rule_hits",
        or_empty(ctx, union_all(rule_frames)?, utf8(&["owner_key", "role"]))?,
    )?;
    view(
        ctx,
        "composite_hits",
        or_empty(
            ctx,
            union_all(composite_frames)?,
            utf8(&["owner_key", "composite"]),
        )?,
    )?;
    let (composite, member): (Vec<&str>, Vec<&str>) = model
        .composite_roles
        .iter()
        .flat_map(|c| c.roles.iter().map(move |r| (c.name.as_str(), r.as_str())))
        .unzip();
    view(
        ctx,
        "composite_members",
        ctx.read_batch(text_batch(&[("composite", composite), ("role", member)])?)?,
    )?;
    let singles: Vec<&str> = model.roles.iter().map(|r| r.name.as_str()).collect();
    view(
        ctx,
        "single_roles",
        ctx.read_batch(text_batch(&[("role", singles)])?)?,
    )?;

    // Manual assignments of known owners.
    let manual = match &model.manual_assignments {
        None => empty(ctx, utf8(&["owner_key", "role"]))?.select(vec![
            col("owner_key"),
            col("role"),
            cast(lit(datafusion::common::ScalarValue::Null), DataType::Date32).alias("start_date"),
            cast(lit(datafusion::common::ScalarValue::Null), DataType::Date32).alias("end_date"),
        ])?,
        Some(m) => {
            let loaded = read_manual(m)?;
            if !loaded.rejected.is_empty() {
                warnings.push(format!(
                    "{}: {} bad row(s) ignored",
                    m.file.display(),
                    loaded.rejected.len()
                ));
            }
            let df = super::frames::frame(ctx, &loaded.schema, &loaded.batches)?.select(vec![
                col("owner_key"),
                col("role"),
                col("start_date"),
                col("end_date"),
                col(crate::input::csv::LINE),
            ])?;
            let known = or_empty(ctx, union_all(known)?, utf8(&["owner_key"]))?
                .select(vec![col("owner_key").alias("_known")])?;
            let names: Vec<Expr> = model
                .roles
                .iter()
                .map(|r| lit(r.name.as_str()))
                .chain(model.composite_roles.iter().map(|r| lit(r.name.as_str())))
                .collect();
            let unknown = df
                .clone()
                .filter(
                    col("role")
                        .in_list(names.clone(), true)
                        .or(col("role").is_null()),
                )?
                .aggregate(vec![col("role")], vec![])?
                .sort(vec![col("role").sort(true, true)])?
                .collect()
                .await?;
            let mut unknown_roles = Vec::new();
            for b in &unknown {
                let roles = text_column(b, "role");
                for i in 0..b.num_rows() {
                    unknown_roles.push(roles.value(i).to_string());
                }
            }
            if !unknown_roles.is_empty() {
                warnings.push(format!(
                    "{}: assignments of unknown role(s) ignored: {}",
                    m.file.display(),
                    unknown_roles.join(", ")
                ));
            }
            // A period that ends before it starts is never active: said, not dropped unseen.
            let reversed = df
                .clone()
                .filter(col("start_date").gt(col("end_date")))?
                .select(vec![col(crate::input::csv::LINE)])?
                .sort(vec![col(crate::input::csv::LINE).sort(true, true)])?
                .collect()
                .await?;
            let lines: Vec<i64> = reversed
                .iter()
                .flat_map(|b| {
                    b.column(0)
                        .as_any()
                        .downcast_ref::<datafusion::arrow::array::Int64Array>()
                        .expect("invariant: the line column is Int64")
                        .values()
                        .to_vec()
                })
                .collect();
            if !lines.is_empty() {
                warnings.push(format!(
                    "{}: {} assignment(s) ending before they start ignored (line {})",
                    m.file.display(),
                    lines.len(),
                    super::first_few(&lines)
                ));
            }
            df.join(known, JoinType::LeftSemi, &["owner_key"], &["_known"], None)?
                .select(vec![
                    col("owner_key"),
                    col("role"),
                    col("start_date"),
                    col("end_date"),
                ])?
        }
    };
    view(ctx, "manual", manual)?;

    // Roles behind pre-existing link values.
    let pre = pre_existing_roles(rc, ctx, catalog).await?;
    let pre = match dirty {
        Some(d) => pre.join(
            d.clone().select(vec![col("key").alias("_k")])?.distinct()?,
            JoinType::LeftSemi,
            &["owner_key"],
            &["_k"],
            None,
        )?,
        None => pre,
    };
    view(ctx, "pre_existing_roles", pre)?;

    Ok((ctx.sql(ASSIGNED_ROLES_SQL).await?, warnings))
}

/// The manual assignments file (`owner_key`, `role`, `start_date`, `end_date`, `_line`), typed
/// by the CSV reader; bad rows fail it unless quarantined.
pub fn read_manual(m: &crate::config::ManualAssignments) -> Result<crate::input::csv::Loaded> {
    use crate::config::ColumnType as T;
    let spec = crate::input::csv::CsvSpec {
        file: m.file.clone(),
        columns: vec![
            ("owner_key".into(), T::String),
            ("role".into(), T::String),
            ("start_date".into(), T::Date),
            ("end_date".into(), T::Date),
        ],
        key: None,
        command_column: None,
        split: Vec::new(),
        dictionary: false,
        options: m.csv.clone(),
    };
    if !m.file.is_file() {
        return Err(Error::Input {
            file: m.file.clone(),
            message: format!(
                "manual assignments file not found (check `file` of [manual_assignments] at pipeline.toml:{})",
                m.line
            ),
        });
    }
    let loaded = crate::input::csv::read(&spec)?;
    crate::input::csv::fail_on_bad_rows(&m.file, &loaded.rejected, m.csv.on_bad_row)?;
    Ok(loaded)
}

/// `(owner_key, role)` for saved pre-existing link values that a role's link rule grants.
async fn pre_existing_roles(
    rc: &RunContext<'_>,
    ctx: &SessionContext,
    catalog: &Catalog,
) -> Result<DataFrame> {
    let mut rts = Vec::new();
    let mut links = Vec::new();
    let mut values = Vec::new();
    let mut roles = Vec::new();
    for rt in &rc.pipeline.model.resource_types {
        for l in &rt.links {
            for v in &l.values {
                if let Some(role) = &v.role {
                    rts.push(rt.name.as_str());
                    links.push(l.link.as_str());
                    values.push(v.target.as_str());
                    roles.push(role.as_str());
                }
            }
        }
    }
    if !catalog.tables.contains_key(PRE_EXISTING) || rts.is_empty() {
        return empty(ctx, utf8(&["owner_key", "role"]));
    }
    let config = ctx.read_batch(text_batch(&[
        ("_rt", rts),
        ("_link", links),
        ("_value", values),
        ("_role", roles),
    ])?)?;
    Ok(ctx
        .table(PRE_EXISTING)
        .await?
        .join(
            config,
            JoinType::Inner,
            &["resource_type", "link", "value"],
            &["_rt", "_link", "_value"],
            None,
        )?
        .select(vec![col("owner_key"), col("_role").alias("role")])?
        .distinct()?)
}

/// A batch of text columns.
pub fn text_batch(columns: &[(&str, Vec<&str>)]) -> Result<RecordBatch> {
    let schema = utf8(&columns.iter().map(|c| c.0).collect::<Vec<_>>());
    RecordBatch::try_new(
        schema,
        columns
            .iter()
            .map(|c| Arc::new(StringArray::from_iter_values(c.1.iter())) as _)
            .collect(),
    )
    .map_err(|e| Error::Engine(e.into()))
}

/// The text type of the link values' link and value columns in a complete run
/// ([`desired_links`]).
fn text_dictionary() -> DataType {
    DataType::Dictionary(Box::new(DataType::UInt32), Box::new(DataType::Utf8))
}

/// `df` with its dictionary-encoded columns decoded.
fn decoded(df: DataFrame) -> Result<DataFrame> {
    let schema = engine::decoded_schema(&Arc::new(df.schema().as_arrow().clone()));
    let columns: Vec<Expr> = schema
        .fields()
        .iter()
        .map(|f| cast(quoted(f.name()), f.data_type().clone()).alias(f.name()))
        .collect();
    Ok(df.select(columns)?)
}

/// `batch` with its `columns` dictionary-encoded ([`text_dictionary`]).
fn encoded(batch: RecordBatch, columns: &[&str]) -> Result<RecordBatch> {
    let fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| match columns.contains(&f.name().as_str()) {
            true => Field::new(f.name(), text_dictionary(), true),
            false => f.as_ref().clone(),
        })
        .collect();
    Ok(engine::cast_batch(&batch, &Arc::new(Schema::new(fields)))?)
}

async fn assigned_resources(
    rc: &RunContext<'_>,
    ctx: &SessionContext,
    catalog: &Catalog,
    rt: &ResourceType,
    dirty: Option<&DataFrame>,
) -> Result<DataFrame> {
    let owner = match dirty {
        Some(d) => dirty_owner_rows(rc, ctx, catalog, &rt.owner, d).await?,
        None => require(ctx, catalog, &rt.owner, "synchronize").await?,
    };
    let key = key_text(rc, &rt.owner);
    view(
        ctx,
        "rt_owners",
        owner.clone().select(vec![key.clone().alias("owner_key")])?,
    )?;
    let hits = if rt.assigns_everyone() {
        owner.select(vec![key.alias("owner_key")])?
    } else if let Some(rule) = &rt.rule {
        rule_hits(ctx, owner, key, &[(rt.name.clone(), rule)], "_rt")?
            .select(vec![col("owner_key")])?
    } else {
        empty(ctx, utf8(&["owner_key"]))?
    };
    let assigned = if rt.roles.is_empty() {
        // The rule's hits (or every owner) are rows of the owner table, one per owner: no
        // repeat to drop, no owner to look for (at 1M identities a grouping and a join of 1M
        // keys for `ad_user`).
        hits
    } else {
        view(ctx, "rt_rule_hits", hits)?;
        let roles: Vec<&str> = rt.roles.iter().map(String::as_str).collect();
        view(
            ctx,
            "rt_roles",
            ctx.read_batch(text_batch(&[("role", roles)])?)?,
        )?;
        ctx.sql(ASSIGNED_OWNERS_SQL).await?
    };
    view(ctx, "rt_assigned", assigned)?;
    let mut corr = ctx
        .table("correlations_new")
        .await?
        .filter(col("resource_type").eq(lit(rt.name.as_str())))?;
    if let Some(d) = dirty {
        // Only the recomputed owners' links: the query groups them by owner before it joins
        // the owners (at 1M identities, 970K links grouped for 6K owners took 0.5 s).
        let owners = d
            .clone()
            .filter(col("entity").eq(lit(rt.owner.as_str())))?
            .select(vec![col("key").alias("k")])?;
        corr = corr.semi_on("owner_key", owners)?;
    }
    view(ctx, "rt_correlations", corr)?;
    let candidates = ctx.table(format!("rt_candidates__{}", rt.name)).await?;
    view(ctx, "rt_candidates", candidates)?;
    Ok(ctx.sql(ASSIGNED_RESOURCES_SQL).await?)
}

/// The target column types of a resource type, by name.
pub fn target_type(rc: &RunContext<'_>, rt: &ResourceType, column: &str) -> DataType {
    rc.pipeline
        .entity(&rt.target)
        .and_then(|e| e.columns.iter().find(|c| c.name == column))
        .map(|c| c.ty.data_type())
        .unwrap_or(DataType::Utf8)
}

/// Desired scalar values of assigned owners, cast to the target column type, as text: one row
/// per (owner, attribute), and one row per owner with a column per attribute (`_spread_owner`
/// first) for `assigned_resources`.
async fn desired_scalars(
    rc: &RunContext<'_>,
    ctx: &SessionContext,
    rt: &ResourceType,
    assigned: DataFrame,
    warnings: &mut Vec<String>,
) -> Result<(
    DataFrame,
    Option<DataFrame>,
    Option<(DataFrame, Vec<String>)>,
)> {
    if rt.scalars.is_empty() {
        return Ok((empty(ctx, scalars_schema())?, None, None));
    }
    let owners = ctx
        .table(rt.owner.as_str())
        .await?
        .with_column("_owner_key", key_text(rc, &rt.owner))?;
    let assigned = assigned.select(vec![col("owner_key").alias("_assigned")])?;
    let owner = owners.clone().join(
        assigned.clone(),
        JoinType::LeftSemi,
        &["_owner_key"],
        &["_assigned"],
        None,
    )?;
    // The same owners as the probe side of the join, which keeps the owner table's stored
    // order (its key's, for a synchronized table).
    let owner_in_order = engine::as_written(assigned.join(
        owners,
        JoinType::RightSemi,
        &["_assigned"],
        &["_owner_key"],
        None,
    )?);
    let mut frames = Vec::new();
    let mut spread = vec![col("_owner_key").alias("_spread_owner")];
    // Per owner, (attribute, value, keep) of each scalar, put in attribute order.
    let mut entries: Vec<(&str, Expr, Expr)> = Vec::new();
    for (column, expr) in &rt.scalars {
        let value = ctx.parse_sql_expr(&expr.text, owner.schema())?;
        let ty = target_type(rc, rt, column);
        spread.push(
            cast(try_cast(value.clone(), ty.clone()), DataType::Utf8).alias(spread_name(column)),
        );
        let typed = try_cast(value.clone(), ty.clone());
        let mut desired = owner.clone();
        if ty != DataType::Utf8 {
            // A value that does not cast to the target column's type is left out (the
            // account's value is kept) and reported, rather than desired as NULL: an order
            // must not clear an attribute because an expression met an unexpected value.
            let failed = value.clone().is_not_null().and(typed.clone().is_null());
            let found = owner
                .clone()
                .filter(failed.clone())?
                .aggregate(
                    vec![],
                    vec![
                        datafusion::functions_aggregate::count::count(lit(1)).alias("n"),
                        datafusion::functions_aggregate::min_max::min(concat(vec![
                            col("_owner_key"),
                            lit(": '"),
                            cast(value.clone(), DataType::Utf8),
                            lit("'"),
                        ]))
                        .alias("example"),
                    ],
                )?
                .collect()
                .await?;
            let n = found.first().map_or(0, |b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<datafusion::arrow::array::Int64Array>()
                    .map_or(0, |a| a.value(0))
            });
            if n > 0 {
                let example = found[0]
                    .column(1)
                    .as_any()
                    .downcast_ref::<datafusion::arrow::array::StringArray>()
                    .map(|a| a.value(0).to_string())
                    .unwrap_or_default();
                warnings.push(format!(
                    "{}: {n} desired value(s) of `{column}` are not a valid {} (e.g. owner {example}); left out, the accounts keep their value",
                    rt.name,
                    rc.pipeline
                        .entity(&rt.target)
                        .and_then(|e| e.columns.iter().find(|c| &c.name == column))
                        .map_or("value", |c| c.ty.name())
                ));
            }
            desired = desired.filter(failed.clone().not())?;
        }
        let keep = if ty != DataType::Utf8 {
            value
                .clone()
                .is_not_null()
                .and(typed.clone().is_null())
                .not()
        } else {
            lit(true)
        };
        entries.push((
            column.as_str(),
            crate::engine::opaque_udf().call(vec![cast(typed.clone(), DataType::Utf8)]),
            keep,
        ));
        frames.push(desired.select(vec![
            lit(rt.name.as_str()).alias("resource_type"),
            col("_owner_key").alias("owner_key"),
            lit(column.as_str()).alias("attribute"),
            // Opaque: a value that is the key column itself must stay a column of its own
            // (see `engine::opaque_udf`).
            crate::engine::opaque_udf()
                .call(vec![cast(typed, DataType::Utf8)])
                .alias("value"),
        ])?);
    }
    entries.sort_by(|a, b| a.0.cmp(b.0));
    let attributes = entries.iter().map(|(a, _, _)| a.to_string()).collect();
    let mut wide = vec![col("_owner_key")];
    for (i, (_, value, keep)) in entries.into_iter().enumerate() {
        wide.push(value.alias(format!("_v{i}")));
        wide.push(keep.alias(format!("_k{i}")));
    }
    let wide = owner_in_order.select(wide)?;
    Ok((
        union_all(frames)?.expect("at least one scalar"),
        Some(owner.select(spread)?),
        Some((wide, attributes)),
    ))
}

/// One resource type's desired scalars, one row per assigned owner ([`desired_scalars`]).
struct WideScalars {
    resource_type: String,
    /// `_owner_key`, then for the `i`th scalar in attribute order its value (`_v{i}`) and
    /// whether the owner's row keeps it (`_k{i}`: false where the value does not cast to the
    /// target column's type); read in the owner table's stored order.
    wide: DataFrame,
    /// The scalars' names, in attribute order.
    attributes: Vec<String>,
    /// The resource type's assigned resources (`owner_key`, `account_key`, `state`), sorted
    /// by owner key.
    resources: DataFrame,
    /// The `assigned_resources` columns over `resources` beside the spread scalars
    /// ([`resource_columns`]).
    columns: Vec<Expr>,
}

/// `assigned_resources` and `assigned_scalars` in their tables' order without a sort or a
/// join: each resource type's wide rows are read once, in the owner table's stored order.
/// When their owner keys strictly ascend (a synchronized table stored by a text key), they
/// are the assigned resources' owners one for one (both the assigned owners, in key order):
/// each resource row takes its scalars from the wide row beside it, and an owner's scalars
/// unpivoted in attribute order ([`engine::unpivot`]) are in order too. The resource types
/// follow each other by name. `None` when some type's keys do not ascend (a number key, a
/// table read from several files) or its rows are not its resources' owners: the caller
/// joins and sorts instead.
async fn in_owner_order(
    ctx: &SessionContext,
    mut parts: Vec<WideScalars>,
    resources_schema: SchemaRef,
) -> Result<Option<(RowsOf, RowsOf)>> {
    parts.sort_by(|a, b| a.resource_type.cmp(&b.resource_type));
    let scalars_schema = scalars_schema();
    // Each part on its own task: its plans run on one partition, inline in whoever polls them.
    let read = parts.into_iter().map(|part| {
        let (ctx, scalars_schema) = (ctx.clone(), Arc::clone(&scalars_schema));
        tokio::spawn(async move {
            let (wide, resources) = futures::try_join!(
                engine::collect_in_order(&ctx, part.wide),
                engine::collect_in_order(&ctx, part.resources),
            )?;
            let (wide, resources) = (wide.1, resources.1);
            if !engine::strictly_ascending(&wide, "_owner_key")? {
                tracing::debug!(
                    resource_type = part.resource_type,
                    "desired scalars not in key order: sorted"
                );
                return Ok(None);
            }
            let rows = |v: &[RecordBatch]| v.iter().map(RecordBatch::num_rows).sum::<usize>();
            if rows(&wide) == 0 {
                return Ok((rows(&resources) == 0).then(|| (Vec::new(), Vec::new())));
            }
            // The scalar values beside the resources, under the names `part.columns` reads.
            let mut spread = vec![col("_owner_key")];
            for (i, attribute) in part.attributes.iter().enumerate() {
                spread.push(ident(format!("_v{i}")).alias(spread_name(attribute)));
            }
            let spread =
                engine::collect_in_order(&ctx, ctx.read_batches(wide.clone())?.select(spread)?)
                    .await?
                    .1;
            let beside = match engine::rows_beside(&resources, &spread)? {
                Some(beside) if same_column(&beside, "owner_key", "_owner_key")? => beside,
                _ => {
                    tracing::debug!(
                        resource_type = part.resource_type,
                        "desired scalars not the resources' owners: joined"
                    );
                    return Ok(None);
                }
            };
            let resources = ctx.read_batches(beside)?.select(part.columns)?;
            let resources = engine::collect_in_order(&ctx, resources).await?.1;
            let columns: Vec<(String, String, String)> = part
                .attributes
                .iter()
                .enumerate()
                .map(|(i, a)| (a.clone(), format!("_v{i}"), format!("_k{i}")))
                .collect();
            let resource_type = datafusion::common::ScalarValue::from(part.resource_type.as_str());
            let scalars = wide
                .iter()
                .map(|b| {
                    let [owner, attribute, value] = engine::unpivot(b, "_owner_key", &columns)?;
                    let rt = resource_type.to_array_of_size(owner.len())?;
                    Ok(RecordBatch::try_new(
                        Arc::clone(&scalars_schema),
                        vec![rt, owner, attribute, value],
                    )?)
                })
                .collect::<Result<Vec<_>>>()?;
            Ok::<_, Error>(Some((resources, scalars)))
        })
    });
    let (mut resources, mut scalars) = (Vec::new(), Vec::new());
    for part in futures::future::try_join_all(read)
        .await
        .map_err(|e| Error::Engine(DataFusionError::External(Box::new(e))))?
    {
        let Some((r, s)) = part? else {
            return Ok(None);
        };
        resources.extend(engine::align(&r, &resources_schema)?);
        scalars.extend(engine::align(&s, &scalars_schema)?);
    }
    Ok(Some((
        (resources_schema, resources),
        (scalars_schema, scalars),
    )))
}

/// Whether columns `a` and `b` of `batches` hold the same values in every row.
fn same_column(batches: &[RecordBatch], a: &str, b: &str) -> Result<bool> {
    for batch in batches {
        let column = |name: &str| -> Result<_> {
            let c = batch.column(batch.schema().index_of(name)?);
            Ok(datafusion::arrow::compute::cast(c, &DataType::Utf8)?)
        };
        if column(a)?.as_ref() != column(b)?.as_ref() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A table's schema and rows.
type RowsOf = (SchemaRef, Vec<RecordBatch>);

/// Whether the committed `table` has rows of resource types other than `rts` (which a task
/// limited to some types keeps).
async fn has_other_types(
    ctx: &SessionContext,
    catalog: &Catalog,
    table: &str,
    rts: &[&ResourceType],
    schema: &Arc<Schema>,
) -> Result<bool> {
    Ok(
        match other_types_rows(ctx, catalog, table, rts, schema).await? {
            Some(rows) => rows.count().await? > 0,
            None => false,
        },
    )
}

/// Desired link values of assigned owners: by role, by rule, unconditional, and pre-existing.
async fn desired_links(
    rc: &RunContext<'_>,
    ctx: &SessionContext,
    catalog: &Catalog,
    rt: &ResourceType,
    assigned: DataFrame,
) -> Result<DataFrame> {
    let assigned_keys = assigned.select(vec![col("owner_key").alias("_assigned")])?;
    let mut frames = Vec::new();
    let (mut ids, mut links, mut values) = (Vec::new(), Vec::new(), Vec::new());
    let (mut role_names, mut role_links, mut role_values) = (Vec::new(), Vec::new(), Vec::new());
    let mut all_ids = Vec::new();
    let mut rules: Vec<(String, &ConfigExpr)> = Vec::new();
    for l in &rt.links {
        for v in &l.values {
            if let Some(role) = &v.role {
                role_names.push(role.as_str());
                role_links.push(l.link.as_str());
                role_values.push(v.target.as_str());
                continue;
            }
            let id = format!("v{}", ids.len());
            match &v.rule {
                Some(rule) => rules.push((id.clone(), rule)),
                None => all_ids.push(id.clone()),
            }
            ids.push(id);
            links.push(l.link.as_str());
            values.push(v.target.as_str());
        }
    }
    if !role_names.is_empty() {
        // By role: the roles' values joined to the assigned roles at once (8.5M rows at 1M
        // identities: no detour through an id joined to the values after).
        // The small side first: a hash join builds its left input (no statistics here).
        let by_role = ctx
            .read_batch(encoded(
                text_batch(&[
                    ("_role", role_names),
                    ("link", role_links),
                    ("value", role_values),
                ])?,
                &["link", "value"],
            )?)?
            .join(
                ctx.table("assigned_roles").await?,
                JoinType::Inner,
                &["_role"],
                &["role"],
                None,
            )?
            .select(vec![col("owner_key"), col("link"), col("value")])?;
        frames.push(by_role);
    }
    if !ids.is_empty() {
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let config = ctx.read_batch(encoded(
            text_batch(&[("_vid", id_refs), ("link", links), ("value", values)])?,
            &["link", "value"],
        )?)?;
        let mut granted = Vec::new();
        // By rule.
        let owner = ctx.table(rt.owner.as_str()).await?;
        granted.push(rule_hits(
            ctx,
            owner,
            key_text(rc, &rt.owner),
            &rules,
            "vid",
        )?);
        // Unconditional.
        let all_refs: Vec<&str> = all_ids.iter().map(String::as_str).collect();
        granted.push(
            assigned_keys
                .clone()
                .join_on(
                    ctx.read_batch(text_batch(&[("vid", all_refs)])?)?,
                    JoinType::Inner,
                    vec![lit(true)],
                )?
                .select(vec![col("_assigned").alias("owner_key"), col("vid")])?,
        );
        let granted = union_all(granted)?.expect("two frames");
        frames.push(
            config
                .join(granted, JoinType::Inner, &["_vid"], &["vid"], None)?
                .select(vec![col("owner_key"), col("link"), col("value")])?,
        );
    }
    if catalog.tables.contains_key(PRE_EXISTING) {
        frames.push(
            ctx.table(PRE_EXISTING)
                .await?
                .filter(col("resource_type").eq(lit(rt.name.as_str())))?
                .select(vec![
                    col("owner_key"),
                    cast(col("link"), text_dictionary()).alias("link"),
                    cast(col("value"), text_dictionary()).alias("value"),
                ])?,
        );
    }
    let Some(all) = union_all(frames)? else {
        return empty(ctx, links_schema());
    };
    Ok(assigned_keys
        .join(
            all,
            JoinType::RightSemi,
            &["_assigned"],
            &["owner_key"],
            None,
        )?
        // Not distinct: the caller drops repeats while it sorts (`NewTable::sorted_distinct`).
        .select(vec![
            cast(lit(rt.name.as_str()), text_dictionary()).alias("resource_type"),
            col("owner_key"),
            col("link"),
            col("value"),
        ])?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;

    /// (rule, owner) of each owner of `table` (key `id`) where a rule of `rules` holds.
    async fn found(
        ctx: &SessionContext,
        table: &DataFrame,
        rules: &[(String, &ConfigExpr)],
    ) -> BTreeSet<(String, String)> {
        let hits = rule_hits(ctx, table.clone(), col("id"), rules, "role")
            .unwrap()
            .collect()
            .await
            .unwrap();
        let mut found = BTreeSet::new();
        for b in &hits {
            let (owners, roles) = (text_column(b, "owner_key"), text_column(b, "role"));
            for i in 0..b.num_rows() {
                found.insert((roles.value(i).to_string(), owners.value(i).to_string()));
            }
        }
        found
    }

    /// The owners `rule_hits` finds for each rule are those a filter by the rule keeps, for
    /// rules of the shapes a pipeline writes (comparisons, LIKE, IN, functions of text, CASE,
    /// NULLs, a rule naming no column) — over dictionary-encoded columns where the rule plans
    /// so, over the columns as they are where one does not.
    #[tokio::test]
    async fn rule_hits_are_the_rows_each_rule_keeps() {
        let ctx = SessionContext::new();
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("dept", DataType::Utf8, true),
            Field::new("status", DataType::Utf8View, true),
            Field::new("grade", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["p1", "p2", "p3", "p4", "p5", "p6"])),
                Arc::new(StringArray::from(vec![
                    Some("Finance-1"),
                    Some("Sales"),
                    None,
                    Some("finance-2"),
                    Some("Finance-1"),
                    Some("Sales"),
                ])),
                Arc::new(datafusion::arrow::array::StringViewArray::from(vec![
                    Some("active"),
                    Some("terminated"),
                    Some("active"),
                    None,
                    Some("active"),
                    Some("active"),
                ])),
                Arc::new(Int64Array::from(vec![
                    Some(3),
                    Some(1),
                    Some(5),
                    Some(2),
                    None,
                    Some(7),
                ])),
            ],
        )
        .unwrap();
        ctx.register_batch("person", batch).unwrap();
        let texts = [
            "status <> 'terminated' AND dept = 'Finance-1' AND grade >= 3",
            "status <> 'terminated'",
            "dept LIKE 'Fin%' OR dept IN ('Sales')",
            "upper(dept) = 'FINANCE-2'",
            "dept || '/' || status = 'Sales/active'",
            "length(dept) > 5 AND substr(dept, 1, 1) = 'F'",
            "CASE WHEN dept IS NULL THEN 'none' ELSE dept END = 'none'",
            "coalesce(status, 'unknown') = 'unknown'",
            "starts_with(dept, 'S') AND NOT (grade < 2)",
            "regexp_like(dept, '^[fF]inance-[0-9]$')",
            "1 = 1",
            "id = 'p6'",
        ];
        let exprs: Vec<ConfigExpr> = texts
            .iter()
            .map(|t| ConfigExpr {
                text: t.to_string(),
                line: 1,
            })
            .collect();
        let rules: Vec<(String, &ConfigExpr)> = exprs
            .iter()
            .enumerate()
            .map(|(i, e)| (format!("r{i}"), e))
            .collect();
        let table = ctx.table("person").await.unwrap();
        // Which rules plan over dictionaries: each alone takes that path or the other.
        let mut encoded = Vec::new();
        for (name, rule) in &rules {
            let cond = ctx.parse_sql_expr(&rule.text, table.schema()).unwrap();
            let texts = [rule.text.clone()];
            if planned_rules(&ctx, &table, &[cond], &texts, true).is_ok() {
                encoded.push(name.as_str());
            }
        }
        assert!(
            ["r0", "r1", "r2", "r4", "r6"]
                .iter()
                .all(|r| encoded.contains(r)),
            "{encoded:?}"
        );
        let all = found(&ctx, &table, &rules).await;
        let mut each = BTreeSet::new();
        for rule in &rules {
            each.extend(found(&ctx, &table, std::slice::from_ref(rule)).await);
        }
        let mut expected: BTreeSet<(String, String)> = BTreeSet::new();
        for (name, rule) in &rules {
            let kept = table
                .clone()
                .filter(ctx.parse_sql_expr(&rule.text, table.schema()).unwrap())
                .unwrap()
                .select(vec![col("id")])
                .unwrap()
                .collect()
                .await
                .unwrap();
            for b in &kept {
                let ids = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
                for i in 0..b.num_rows() {
                    expected.insert((name.clone(), ids.value(i).to_string()));
                }
            }
        }
        // The filters keep some rows and not others: the comparison is not of empty sets.
        assert!(
            expected.len() > 12 && expected.len() < 12 * 6,
            "{expected:?}"
        );
        assert_eq!(all, expected);
        assert_eq!(each, expected);
        // The columns as they are (where a rule does not plan over dictionaries) give the
        // same positions.
        let conds: Vec<Expr> = texts
            .iter()
            .map(|t| ctx.parse_sql_expr(t, table.schema()).unwrap())
            .collect();
        let texts: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
        let both = table
            .clone()
            .select(vec![
                planned_rules(&ctx, &table, &conds, &texts, true)
                    .unwrap()
                    .alias("encoded"),
                planned_rules(&ctx, &table, &conds, &texts, false)
                    .unwrap()
                    .alias("plain"),
            ])
            .unwrap()
            .collect()
            .await
            .unwrap();
        for b in &both {
            assert_eq!(b.column(0), b.column(1));
        }
    }
}
