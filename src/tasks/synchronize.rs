//! `synchronize`: apply a connector's export to its tables — complete, incremental or initial —
//! with history, `recently_modified`, thresholds and one atomic commit for the whole connector.
//!
//! Per entity the change set comes from `sql/synchronize_complete.sql` or
//! `sql/synchronize_incremental.sql` over two views, `sync_staged` and `sync_current`, that
//! encode each row as (`_key`, `_values`). Links always end as a whole new set of pairs (the
//! export, or the current pairs plus the file's commands, minus pairs whose endpoint no longer
//! exists), compared with the complete query. Nothing is written until every table of the
//! connector is computed and the thresholds have passed; then each table gets its next Delta
//! version and one catalog commit publishes them together (see `store`).

use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::arrow::array::{Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::functions::core::expr_fn::coalesce;
use datafusion::functions::string::expr_fn::concat;
use datafusion::logical_expr::SortExpr;
use datafusion::prelude::*;

use super::frames::{committed, frame, quoted};
use super::prepare_synchronization::{self, Prepared, PreparedTable, register_new_keys};
use super::{RunContext, TaskOutcome, TaskStatus, failpoint};
use crate::config::{Entity, Link, SyncMode, Task, Thresholds, timestamp_type};
use crate::engine::{self, expr::apply_computed};
use crate::error::{Error, Result};
use crate::input::csv::COMMAND;
use crate::store::{BatchMap, BlockedConnector, Catalog, CatalogChange, Patch, Rows, WriteMode};

const COMPLETE_SQL: &str = include_str!("../../sql/synchronize_complete.sql");
const INCREMENTAL_SQL: &str = include_str!("../../sql/synchronize_incremental.sql");

/// Separator of the two endpoint values in a link's `_key`.
const PAIR_SEP: &str = "\u{1f}";

/// The computed changes of one table.
struct TablePlan {
    name: String,
    thresholds: Thresholds,
    /// Rows in the committed table (the threshold base).
    base_rows: u64,
    /// Rows in the export; `None` for a link touched only by cascading deletes.
    staged_rows: Option<u64>,
    inserted: u64,
    updated: u64,
    deleted: u64,
    warnings: Vec<String>,
    /// New content of the table and of its history, when anything changed.
    new_state: Option<(SchemaRef, Vec<RecordBatch>)>,
    new_history: Option<Rows>,
    /// An incremental run's changes as patches ([`crate::store::Patch`]) of the committed
    /// state and history: `new_state` and `new_history` then hold only the rows they add.
    patches: Option<(Box<Patch>, Box<Patch>)>,
    /// (`key`, `change`) rows for `recently_modified`; `None` when nothing changed.
    modified: Option<DataFrame>,
    /// Why the table is written although no row changed: it did not exist yet (an empty
    /// export's first synchronization), or its columns are not the configured ones any more.
    reshaped: Option<&'static str>,
}

impl TablePlan {
    fn changes(&self) -> u64 {
        self.inserted + self.updated + self.deleted
    }

    /// Why this table's changes exceed its thresholds, if they do.
    fn blocked_reason(&self, mode: SyncMode) -> Option<String> {
        if mode == SyncMode::Initial {
            return None;
        }
        if mode == SyncMode::Complete && self.staged_rows == Some(0) && self.base_rows > 0 {
            return Some(format!(
                "{}: the export is empty but the table has {} rows (all {} rows, 100.0%, would be deleted)",
                self.name, self.base_rows, self.base_rows
            ));
        }
        let t = &self.thresholds;
        if self.base_rows < t.min_rows || self.base_rows == 0 {
            return None;
        }
        let pct = |n: u64| n as f64 * 100.0 / self.base_rows as f64;
        let checks = [
            (
                "deleted",
                self.deleted,
                Some(t.max_deleted_percent),
                t.max_deleted,
            ),
            (
                "inserted",
                self.inserted,
                t.max_inserted_percent,
                t.max_inserted,
            ),
            (
                "updated",
                self.updated,
                t.max_updated_percent,
                t.max_updated,
            ),
        ];
        for (what, n, max_pct, max_n) in checks {
            if let Some(p) = max_pct
                && pct(n) > p
            {
                return Some(format!(
                    "{}: {n} of {} rows ({:.1}%) would be {what}, above max_{what}_percent = {p}",
                    self.name,
                    self.base_rows,
                    pct(n)
                ));
            }
            if let Some(m) = max_n
                && n > m
            {
                return Some(format!(
                    "{}: {n} of {} rows ({:.1}%) would be {what}, above max_{what} = {m}",
                    self.name,
                    self.base_rows,
                    pct(n)
                ));
            }
        }
        None
    }
}

pub async fn run(rc: &RunContext<'_>, task: &Task) -> Result<TaskOutcome> {
    let connector = task.connector.as_deref().expect("invariant: validated");
    let mode = task.mode;
    let force = rc.force || task.force;
    let catalog = rc.store.catalog().await?;

    if mode == SyncMode::Incremental
        && !force
        && let Some(b) = catalog.blocked.get(connector)
    {
        return Ok(TaskOutcome::skipped(format!(
            "connector `{connector}` is blocked since run {} ({}); incremental runs skip it until a complete synchronization succeeds or is forced",
            b.run_id, b.message
        )));
    }

    let mut phases = super::Phases::new("synchronize");
    let mut prepared = match catalog.staged.get(connector) {
        Some(s) if s.run_id == rc.run_id && s.mode == mode.name() => {
            load_staging(rc, &catalog, connector, mode).await?
        }
        _ => prepare_synchronization::prepare(rc, &catalog, connector, mode).await?,
    };
    let parsed_here = !matches!(catalog.staged.get(connector), Some(s) if s.run_id == rc.run_id);
    phases.done("prepare");

    let ctx = engine::context_at(rc.as_of);
    if mode == SyncMode::Incremental {
        engine::filter_while_decoding(&ctx);
    }
    rc.store.register_all(&ctx, &catalog).await?;

    if mode == SyncMode::Initial {
        for t in prepared.entities.iter().chain(&prepared.links) {
            if catalog.tables.contains_key(&t.name) {
                let n = ctx.table(t.name.as_str()).await?.count().await?;
                if n > 0 {
                    return Err(Error::Usage(format!(
                        "initial load of connector `{connector}` refused: table `{}` already has {n} rows (an initial load only fills empty tables; use mode = \"complete\")",
                        t.name
                    )));
                }
            }
        }
    }

    let valid_from = rc.started_at.timestamp_micros();
    let mut plans = Vec::new();
    for e in rc.pipeline.connector_entities(connector) {
        let staged = prepared
            .entity(&e.name)
            .expect("invariant: prepared every entity");
        let held = prepared.held_keys(&e.name);
        plans.push(plan_entity(&ctx, rc, &catalog, e, staged, &held, mode, valid_from).await?);
        phases.done(&e.name);
    }
    // Keys after this synchronization, for links of any connector that reference these entities.
    for e in &rc.pipeline.entities {
        if e.connector == connector {
            let p = plans
                .iter()
                .find(|p| p.name == e.name)
                .expect("planned above");
            register_planned_keys(&ctx, &catalog, e, p).await?;
        } else {
            register_new_keys(&ctx, rc, &catalog, &prepared, e, mode).await?;
        }
    }
    let touched: BTreeSet<&str> = rc
        .pipeline
        .connector_entities(connector)
        .map(|e| e.name.as_str())
        .collect();
    for l in &rc.pipeline.links {
        // The link's rows move into its plan, which drops them once its pairs are sorted.
        let staged = prepared
            .links
            .iter_mut()
            .find(|t| t.name == l.name)
            .map(PreparedTable::take);
        if staged.is_none()
            && !touched.contains(l.from.entity.as_str())
            && !touched.contains(l.to.entity.as_str())
        {
            continue;
        }
        // Pairs parsed by this task had their endpoints checked against the same keys.
        let checked = parsed_here && staged.is_some() && mode != SyncMode::Incremental;
        plans.push(plan_link(&ctx, rc, &catalog, l, staged, checked, mode, valid_from).await?);
        phases.done(&l.name);
    }

    let rejected = prepared.rejected.len() as u64;
    let changes: u64 = plans.iter().map(TablePlan::changes).sum();
    let warnings: Vec<String> = plans
        .iter()
        .flat_map(|p| p.warnings.iter().cloned())
        .collect();
    let summary = summarize(&plans, rejected, &warnings);

    // Thresholds, all tables of the connector together.
    let blocked: Vec<String> = plans
        .iter()
        .filter_map(|p| p.blocked_reason(mode))
        .collect();
    if !blocked.is_empty() && !force {
        let message = format!(
            "synchronization of connector `{connector}` blocked, nothing of it was committed: {}. If the export is right, re-run with --force (or set force = true on the task).",
            blocked.join("; ")
        );
        if !rc.dry_run {
            let mut change = CatalogChange {
                run_id: rc.run_id.clone(),
                what: format!("blocked:{connector}"),
                ..Default::default()
            };
            change.block.insert(
                connector.to_string(),
                BlockedConnector {
                    run_id: rc.run_id.clone(),
                    message: blocked.join("; "),
                },
            );
            rc.store.commit(&catalog, change).await?;
        }
        return Ok(TaskOutcome {
            status: TaskStatus::Blocked,
            // What was read, though none of it is committed (before: 0).
            rows_read: prepared.rows_read(),
            rows_written: 0,
            changes: 0,
            message,
            exit_code: crate::error::exit::BLOCKED,
        });
    }

    // Tables written although no row changed (created empty, or with new columns).
    let reshaped = plans.iter().any(|p| p.reshaped.is_some());
    let status = if !warnings.is_empty() || rejected > 0 {
        TaskStatus::Warning
    } else if changes == 0 && !reshaped {
        TaskStatus::NoChanges
    } else {
        TaskStatus::Succeeded
    };
    let mut outcome = TaskOutcome {
        status,
        rows_read: prepared.rows_read(),
        rows_written: 0,
        changes,
        message: summary,
        exit_code: 0,
    };
    // A complete run that passes its thresholds, or any forced run (an incremental one gets
    // here while blocked only when forced), clears the block.
    let unblock =
        catalog.blocked.contains_key(connector) && (mode != SyncMode::Incremental || force);
    if rc.dry_run || (changes == 0 && rejected == 0 && !unblock && !reshaped) {
        if rc.dry_run {
            outcome.message = format!("dry run, nothing committed: {}", outcome.message);
            for p in &plans {
                if let Some((schema, batches)) = &p.new_state {
                    rc.stage_dry_run(super::frames::NewTable {
                        name: p.name.clone(),
                        schema: schema.clone(),
                        batches: batches.clone(),
                        known: Default::default(),
                        patch: None,
                    });
                }
            }
            // The changed keys too: the dirty tasks after it read them.
            if let Some(modified) = recently_modified(rc, &plans)? {
                let (schema, batches) = super::frames::collect(modified).await?;
                super::frames::stage_appended(
                    rc,
                    super::frames::NewTable {
                        name: "recently_modified".into(),
                        schema,
                        batches,
                        known: super::frames::Known::Added,
                        patch: None,
                    },
                )
                .await?;
            }
        }
        return Ok(outcome);
    }

    // Commit: every table's next Delta version, then one catalog file, on top of the latest
    // committed state. The connector's own tables must be as this run read them.
    let _commits = rc.store.lock_commits().await;
    let latest = rc.store.catalog().await?;
    for p in &plans {
        for t in [p.name.clone(), format!("{}__history", p.name)] {
            if latest.tables.get(&t) != catalog.tables.get(&t) {
                return Err(Error::Conflict(format!(
                    "store: table `{t}` was committed by another run while this one computed (connector `{connector}`); nothing of this task is visible — re-run it"
                )));
            }
        }
    }
    let catalog = latest;
    let mut change = CatalogChange {
        run_id: rc.run_id.clone(),
        what: format!("sync:{connector}"),
        ..Default::default()
    };
    if unblock {
        change.unblock.push(connector.to_string());
    }
    /// A table's rows to write: ready, or a query run as its write starts, beside the others'
    /// encoding (`recently_modified`'s sort of every changed key).
    enum ToWrite {
        Ready(Rows),
        Query(DataFrame),
    }
    let mut pending: Vec<(String, ToWrite, WriteMode, Option<Box<Patch>>)> = Vec::new();
    let rows = |(schema, batches): (SchemaRef, Vec<RecordBatch>)| Rows {
        schema,
        batches,
        map: None,
    };
    let ready = |s| ToWrite::Ready(rows(s));
    let modified = recently_modified(rc, &plans)?;
    for p in plans {
        let (state_patch, history_patch) = match p.patches {
            Some((s, h)) => (Some(s), Some(h)),
            None => (None, None),
        };
        if let Some(s) = p.new_state {
            pending.push((p.name.clone(), ready(s), WriteMode::Overwrite, state_patch));
        }
        if let Some(h) = p.new_history {
            let name = format!("{}__history", p.name);
            pending.push((name, ToWrite::Ready(h), WriteMode::Overwrite, history_patch));
        }
    }
    if let Some(modified) = modified {
        pending.push((
            "recently_modified".into(),
            ToWrite::Query(modified),
            WriteMode::Append,
            None,
        ));
    }
    if parsed_here && rejected > 0 {
        let batch = prepare_synchronization::rejected_rows_batch(
            &rc.run_id,
            connector,
            &prepared.rejected,
        )?;
        pending.push((
            "rejected_rows".into(),
            ready((batch.schema(), vec![batch])),
            WriteMode::Append,
            None,
        ));
    }
    // The tables are written concurrently (each write encodes on its own task); the failpoint
    // after each write lets tests kill the run with some versions written and none committed.
    let steps = pending.len();
    let catalog = &catalog;
    let writes =
        pending
            .into_iter()
            .enumerate()
            .map(|(step, (name, table_rows, mode, patch))| async move {
                let table_rows = match table_rows {
                    ToWrite::Ready(r) => r,
                    ToWrite::Query(df) => rows(super::frames::collect(df).await?),
                };
                let rows = table_rows
                    .batches
                    .iter()
                    .map(|b| b.num_rows() as u64)
                    .sum::<u64>();
                let v = match patch {
                    Some(patch) => {
                        let Rows {
                            schema, batches, ..
                        } = table_rows;
                        rc.store
                            .write_patch(catalog, &name, &patch, schema, batches, &rc.run_id)
                            .await?
                    }
                    None => {
                        rc.store
                            .write_rows(catalog, &name, table_rows, mode, &rc.run_id)
                            .await?
                    }
                };
                failpoint(&format!("sync.commit.{step}"));
                Ok::<_, Error>((name, v, rows))
            });
    let mut written = 0u64;
    for (name, v, rows) in futures::future::try_join_all(writes).await? {
        written += rows;
        change.tables.insert(name, v);
    }
    failpoint(&format!("sync.commit.{steps}"));
    rc.store.commit(catalog, change).await?;
    phases.done("commit");
    outcome.rows_written = written;
    Ok(outcome)
}

/// The `recently_modified` rows of the plans' changed keys, sorted; `None` without any.
fn recently_modified(rc: &RunContext<'_>, plans: &[TablePlan]) -> Result<Option<DataFrame>> {
    let mut modified = Vec::new();
    for p in plans {
        if let Some(m) = &p.modified {
            modified.push(m.clone().select(vec![
                lit(p.name.as_str()).alias("entity"),
                col("key"),
                lit(rc.run_id.as_str()).alias("run_id"),
                col("change"),
            ])?);
        }
    }
    super::role_model::union_all(modified)?
        .map(|m| {
            m.sort(vec![
                col("entity").sort(true, true),
                col("key").sort(true, true),
                col("change").sort(true, true),
            ])
        })
        .transpose()
        .map_err(Into::into)
}

const TABLE_CREATED: &str = "table created";
const COLUMNS_CHANGED: &str = "columns changed";

/// The stored table `name` with the `configured` columns: each stored column cast to its
/// configured type (a value that does not cast is NULL), a column it lacks NULL.
async fn stored_as(ctx: &SessionContext, name: &str, configured: &SchemaRef) -> Result<DataFrame> {
    let stored = ctx.table(name).await?;
    let have = stored.schema().clone();
    let columns: Vec<Expr> = configured
        .fields()
        .iter()
        .map(|f| {
            let value = if have.has_column_with_unqualified_name(f.name()) {
                try_cast(quoted(f.name()), f.data_type().clone())
            } else {
                cast(lit(ScalarValue::Null), f.data_type().clone())
            };
            value.alias(f.name())
        })
        .collect();
    Ok(stored.select(columns)?)
}

/// Why an unchanged table must be written anyway: it (or its history) does not exist yet, or
/// its stored columns are not `configured` (names in order and types; a column added to or
/// removed from `pipeline.toml`, or a changed type). `None` when it is as configured.
async fn reshaped(
    ctx: &SessionContext,
    catalog: &Catalog,
    name: &str,
    configured: &Schema,
) -> Result<Option<&'static str>> {
    if !catalog.tables.contains_key(name)
        || !catalog.tables.contains_key(&format!("{name}__history"))
    {
        return Ok(Some(TABLE_CREATED));
    }
    let stored = ctx.table(name).await?;
    let stored = stored.schema().as_arrow();
    let same = stored.fields().len() == configured.fields().len()
        && stored
            .fields()
            .iter()
            .zip(configured.fields())
            .all(|(s, c)| s.name() == c.name() && same_type(s.data_type(), c.data_type()));
    Ok((!same).then_some(COLUMNS_CHANGED))
}

/// Whether a stored column's type is the configured one, whatever the string or dictionary
/// representation the scan chose.
fn same_type(stored: &DataType, configured: &DataType) -> bool {
    fn plain(t: &DataType) -> DataType {
        match t {
            DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
            DataType::Dictionary(_, v) => plain(v),
            DataType::Timestamp(unit, tz) => {
                DataType::Timestamp(*unit, tz.as_ref().map(|_| "UTC".into()))
            }
            other => other.clone(),
        }
    }
    plain(stored) == plain(configured)
}

fn summarize(plans: &[TablePlan], rejected: u64, warnings: &[String]) -> String {
    let mut parts: Vec<String> = plans
        .iter()
        .map(|p| {
            format!(
                "{}: {} inserted, {} updated, {} deleted{}",
                p.name,
                p.inserted,
                p.updated,
                p.deleted,
                p.reshaped.map(|r| format!(" ({r})")).unwrap_or_default()
            )
        })
        .collect();
    if rejected > 0 {
        parts.push(format!("{rejected} rows rejected (see rejected_rows)"));
    }
    if !warnings.is_empty() {
        parts.push(format!(
            "{} warning{}: {}",
            warnings.len(),
            if warnings.len() == 1 { "" } else { "s" },
            super::first_few(warnings)
        ));
    }
    parts.join("; ")
}

fn ts_lit(micros: i64) -> Expr {
    lit(ScalarValue::TimestampMicrosecond(
        Some(micros),
        Some("UTC".into()),
    ))
}

fn history_schema(state: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = state
        .fields()
        .iter()
        .map(|f| Field::new(f.name(), f.data_type().clone(), true))
        .collect();
    fields.push(Field::new("_valid_from", timestamp_type(), true));
    fields.push(Field::new("_valid_to", timestamp_type(), true));
    fields.push(Field::new("_change", DataType::Utf8, true));
    fields.push(Field::new("_run_id", DataType::Utf8, true));
    Arc::new(Schema::new(fields))
}

/// Runs one of the change-set queries over `sync_staged` / `sync_current`.
async fn change_set(
    ctx: &SessionContext,
    staged: DataFrame,
    current: DataFrame,
    sql: &str,
) -> Result<Vec<RecordBatch>> {
    let _ = ctx.deregister_table("sync_staged")?;
    let _ = ctx.deregister_table("sync_current")?;
    ctx.register_table("sync_staged", staged.into_view())?;
    ctx.register_table("sync_current", current.into_view())?;
    Ok(ctx.sql(sql).await?.collect().await?)
}

/// The rows of a change set that change: a frame of (`_ck` key, `_cc` change), its counts by
/// change, and its warnings.
struct Changes {
    rows: DataFrame,
    inserted: u64,
    updated: u64,
    deleted: u64,
    warnings: Vec<String>,
}

impl Changes {
    fn total(&self) -> u64 {
        self.inserted + self.updated + self.deleted
    }
}

/// Splits the collected change set (`_key`, `_change`, `_warning`) with Arrow kernels: the
/// changing rows stay columnar (a first load changes every row of the export).
fn read_changes(ctx: &SessionContext, table: &str, batches: &[RecordBatch]) -> Result<Changes> {
    use datafusion::arrow::compute::{filter_record_batch, kernels::cmp};
    let schema = Arc::new(Schema::new(vec![
        Field::new("_ck", DataType::Utf8, true),
        Field::new("_cc", DataType::Utf8, true),
    ]));
    let mut rows = Vec::with_capacity(batches.len());
    let (mut inserted, mut updated, mut deleted) = (0u64, 0u64, 0u64);
    let mut warnings = Vec::new();
    let arrow = |e: datafusion::arrow::error::ArrowError| {
        Error::Engine(datafusion::error::DataFusionError::from(e))
    };
    for b in batches {
        let change = b.column(1);
        let count = |c: &str| -> Result<u64> {
            Ok(cmp::eq(change, &StringArray::new_scalar(c))
                .map_err(arrow)?
                .true_count() as u64)
        };
        inserted += count("insert")?;
        updated += count("update")?;
        deleted += count("delete")?;
        let keep = cmp::neq(change, &StringArray::new_scalar("none")).map_err(arrow)?;
        let two = RecordBatch::try_new(schema.clone(), vec![b.column(0).clone(), change.clone()])
            .map_err(arrow)?;
        rows.push(filter_record_batch(&two, &keep).map_err(arrow)?);
        let w = b
            .column(2)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("change set columns are text");
        if w.null_count() < w.len() {
            let k = b
                .column(0)
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("change set columns are text");
            for i in (0..b.num_rows()).filter(|i| w.is_valid(*i)) {
                warnings.push(format!(
                    "{table} `{}`: {}",
                    k.value(i).replace(PAIR_SEP, " → "),
                    w.value(i)
                ));
            }
        }
    }
    Ok(Changes {
        rows: frame(ctx, &schema, &rows)?,
        inserted,
        updated,
        deleted,
        warnings,
    })
}

/// The next history: committed rows with the open version of every changed key closed at
/// `valid_from`, plus a new open row per inserted or updated key and a closed `delete` row per
/// deleted key. Sorted by key and time.
#[allow(clippy::too_many_arguments)]
pub(super) async fn next_history(
    ctx: &SessionContext,
    catalog: &Catalog,
    history_name: &str,
    key: &dyn Fn() -> Expr,
    sort: Vec<Expr>,
    (state_schema, state_batches): (&SchemaRef, &[RecordBatch]),
    old_state: DataFrame,
    ch: DataFrame,
    run_id: &str,
    valid_from: i64,
    committed_history: Option<DataFrame>,
) -> Result<Rows> {
    let new_state = frame(ctx, state_schema, state_batches)?;
    // The old state in the new state's types (a computed column retyped by its expression).
    let old_state =
        super::frames::conform(old_state, &Arc::new(new_state.schema().as_arrow().clone()))?;
    let schema = history_schema(&Arc::new(new_state.schema().as_arrow().clone()));
    let names: Vec<Expr> = schema.fields().iter().map(|f| quoted(f.name())).collect();
    let opened_columns = |df: DataFrame, change: Expr| -> Result<DataFrame> {
        Ok(df
            .with_column("_valid_from", ts_lit(valid_from))?
            .with_column("_valid_to", cast(lit(ScalarValue::Null), timestamp_type()))?
            .with_column("_change", change)?
            .with_column("_run_id", lit(run_id))?
            .select(names.clone())?)
    };
    if committed_history.is_none()
        && !catalog.tables.contains_key(history_name)
        && old_state.clone().count().await? == 0
    {
        // A first load: every row is an insert, already in key order (the state is sorted).
        // Each state batch gets its history columns as it is written: at 1M identities the
        // run id alone would take 0.5 GB for the 13.6M membership pairs.
        return Ok(Rows {
            schema: schema.clone(),
            batches: state_batches.to_vec(),
            map: Some(opened_on_first_load(
                schema,
                run_id,
                valid_from,
                state_batches
                    .iter()
                    .map(RecordBatch::num_rows)
                    .max()
                    .unwrap_or(0),
            )),
        });
    }
    let closing = ch
        .clone()
        .filter(col("_cc").in_list(vec![lit("update"), lit("delete")], false))?;
    let committed_history = match committed_history {
        Some(h) => h,
        None => committed(ctx, catalog, history_name, &schema).await?,
    };
    // The change set is the hash table of each join: it is small next to the tables.
    let old = closing
        .join(
            committed_history.with_column("_hk", key())?,
            JoinType::Right,
            &["_ck"],
            &["_hk"],
            None,
        )?
        .with_column(
            "_valid_to",
            when(
                col("_valid_to").is_null().and(col("_ck").is_not_null()),
                ts_lit(valid_from),
            )
            .otherwise(col("_valid_to"))?,
        )?
        .select(names.clone())?;
    let opened = opened_columns(
        ch.clone().filter(col("_cc").not_eq(lit("delete")))?.join(
            new_state.with_column("_hk", key())?,
            JoinType::Inner,
            &["_ck"],
            &["_hk"],
            None,
        )?,
        col("_cc"),
    )?;
    let deleted = ch
        .filter(col("_cc").eq(lit("delete")))?
        .join(
            old_state.with_column("_hk", key())?,
            JoinType::Inner,
            &["_ck"],
            &["_hk"],
            None,
        )?
        .with_column("_valid_from", ts_lit(valid_from))?
        .with_column("_valid_to", ts_lit(valid_from))?
        .with_column("_change", lit("delete"))?
        .with_column("_run_id", lit(run_id))?
        .select(names)?;
    let mut order: Vec<SortExpr> = sort.into_iter().map(|e| e.sort(true, true)).collect();
    order.push(col("_valid_from").sort(true, true));
    order.push(col("_valid_to").sort(true, false));
    let batches = old
        .union(opened)?
        .union(deleted)?
        .sort(order)?
        .collect()
        .await?;
    Ok(Rows {
        schema,
        batches,
        map: None,
    })
}

/// A link's next history when its added and removed pairs are known (both sorted, from the
/// merge with the stored pairs): the committed history as stored, sorted, with the open rows
/// of the removed pairs closed now, and one row per changed pair placed among them (an
/// `insert` opened now, a `delete` opened and closed now) — the rows [`next_history`] gives,
/// without turning each of the 13.6M pairs of 1M identities into a key three times and
/// sorting the whole history again (with 1% of the memberships changed, the task's peak fell
/// from 8.6 to 5.3 GB). `None` when the committed history is missing or not in order; the
/// caller then uses [`next_history`].
#[allow(clippy::too_many_arguments)]
async fn link_history(
    ctx: &SessionContext,
    catalog: &Catalog,
    history_name: &str,
    state_schema: &SchemaRef,
    (f, t): (&str, &str),
    (added, removed): &(Vec<RecordBatch>, Vec<RecordBatch>),
    run_id: &str,
    valid_from: i64,
) -> Result<Option<Rows>> {
    if !catalog.tables.contains_key(history_name) {
        return Ok(None);
    }
    let schema = history_schema(state_schema);
    let names: Vec<Expr> = schema.fields().iter().map(|c| quoted(c.name())).collect();
    let history = committed(ctx, catalog, history_name, &schema).await?;
    let removed_pairs = frame(ctx, state_schema, removed)?;
    // Each stored row with whether its pair is removed: the removed pairs are the hash table,
    // and the join keeps the stored order of the rows it probes.
    let kept = if removed.iter().all(|b| b.num_rows() == 0) {
        history
    } else {
        removed_pairs
            .clone()
            .select(vec![quoted(f).alias("_of"), quoted(t).alias("_ot")])?
            .join(history, JoinType::RightMark, &["_of", "_ot"], &[f, t], None)?
            .with_column(
                "_valid_to",
                when(
                    col("mark").and(col("_valid_to").is_null()),
                    ts_lit(valid_from),
                )
                .otherwise(col("_valid_to"))?,
            )?
            .select(names.clone())?
    };
    let (_, kept) = engine::collect_in_order(ctx, kept).await?;
    let changed = |pairs: DataFrame, change: &str, closed: bool| -> Result<DataFrame> {
        let valid_to = if closed {
            ts_lit(valid_from)
        } else {
            cast(lit(ScalarValue::Null), timestamp_type())
        };
        Ok(pairs
            .with_column("_valid_from", ts_lit(valid_from))?
            .with_column("_valid_to", valid_to)?
            .with_column("_change", lit(change))?
            .with_column("_run_id", lit(run_id))?
            .select(names.clone())?)
    };
    let new = changed(frame(ctx, state_schema, added)?, "insert", false)?
        .union(changed(removed_pairs, "delete", true)?)?
        .sort(vec![quoted(f).sort(true, true), quoted(t).sort(true, true)])?
        .collect()
        .await?;
    // A pair's stored rows all opened before this run: its new row goes after them.
    let spliced = engine::splice(&schema, &kept, &new, &[f, t, "_valid_from"])?;
    Ok(spliced.map(|batches| Rows {
        schema,
        batches,
        map: None,
    }))
}

/// A first load's history rows of a state batch: the state's columns, opened at `valid_from`
/// by an `insert` of `run_id` (the columns `opened_columns` adds in [`next_history`]). The four
/// history columns hold one value each: they are built once, for the longest batch
/// (`longest` rows), and each batch takes a slice of them, so a first load does not build and
/// fill them again for every batch of its 13.6M membership pairs at 1M identities.
fn opened_on_first_load(
    schema: SchemaRef,
    run_id: &str,
    valid_from: i64,
    longest: usize,
) -> BatchMap {
    use datafusion::arrow::array::{ArrayRef, TimestampMicrosecondArray, new_null_array};
    let state_part = Arc::new(Schema::new(
        schema.fields()[..schema.fields().len() - 4].to_vec(),
    ));
    let run_id = run_id.to_string();
    let build = move |n: usize| -> [ArrayRef; 4] {
        [
            Arc::new(
                TimestampMicrosecondArray::from_value(valid_from, n)
                    .with_data_type(timestamp_type()),
            ),
            new_null_array(&timestamp_type(), n),
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                "insert", n,
            ))),
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                run_id.as_str(),
                n,
            ))),
        ]
    };
    let opened = build(longest);
    Arc::new(move |b: &RecordBatch| {
        let n = b.num_rows();
        let mut columns: Vec<ArrayRef> = engine::cast_batch(b, &state_part)?.columns().to_vec();
        match n <= longest {
            true => columns.extend(opened.iter().map(|c| c.slice(0, n))),
            // Not one of the batches it was built for: its own columns.
            false => columns.extend(build(n)),
        }
        Ok(RecordBatch::try_new(Arc::clone(&schema), columns)?)
    })
}

#[allow(clippy::too_many_arguments)]
async fn plan_entity(
    ctx: &SessionContext,
    rc: &RunContext<'_>,
    catalog: &Catalog,
    e: &Entity,
    staged_table: &PreparedTable,
    held: &[String],
    mode: SyncMode,
    valid_from: i64,
) -> Result<TablePlan> {
    let declared = engine::expr::declared_schema(e);
    let decl_cols: Vec<Expr> = declared.fields().iter().map(|f| quoted(f.name())).collect();
    let key = || cast(quoted(&e.key), DataType::Utf8);
    let encode = |df: DataFrame, with_command: bool| -> Result<DataFrame> {
        let mut exprs = vec![
            key().alias("_key"),
            engine::row_values_udf()
                .call(decl_cols.clone())
                .alias("_values"),
        ];
        if with_command {
            exprs.push(col(COMMAND));
        }
        Ok(df.select(exprs)?)
    };
    let staged = staged_table.frame(ctx)?;
    let current = committed(ctx, catalog, &e.name, &declared).await?;
    let base_rows = current.clone().count().await? as u64;
    let staged = if held.is_empty() || base_rows == 0 {
        staged
    } else {
        let kept =
            prepare_synchronization::held_rows(ctx, current.clone(), staged.clone(), &key, held)?;
        staged.union(kept)?
    };
    let incremental = mode == SyncMode::Incremental;
    let sql = if incremental {
        INCREMENTAL_SQL
    } else {
        COMPLETE_SQL
    };
    let changes = if base_rows == 0 && !incremental {
        // A first load inserts every row of the export (its keys are unique and present).
        Changes {
            rows: staged
                .clone()
                .select(vec![key().alias("_ck"), lit("insert").alias("_cc")])?,
            inserted: staged_table.num_rows(),
            updated: 0,
            deleted: 0,
            warnings: Vec::new(),
        }
    } else {
        // A change file names the keys it changes: only their committed rows are compared,
        // looked up by key in the store (at 1M identities, a thousand of a million rows,
        // instead of every row's values encoded). A key that is not text is compared as text
        // in the change set: the whole table then, as before.
        let compared = match incremental && super::dirty::text_column(&current, &e.key) {
            true => {
                let keys = staged.clone().select(vec![key().alias("k")])?.distinct()?;
                super::dirty::keyed(rc, ctx, catalog, &e.name, current.clone(), &e.key, &keys)
                    .await?
            }
            false => current.clone(),
        };
        let batches = change_set(
            ctx,
            encode(staged.clone(), incremental)?,
            encode(compared, false)?,
            sql,
        )
        .await?;
        read_changes(ctx, &e.name, &batches)?
    };
    let rows = changes.rows.clone();
    let mut plan = TablePlan {
        name: e.name.clone(),
        thresholds: e.thresholds.clone(),
        base_rows,
        staged_rows: Some(staged_table.num_rows()),
        inserted: changes.inserted,
        updated: changes.updated,
        deleted: changes.deleted,
        warnings: changes.warnings.clone(),
        new_state: None,
        new_history: None,
        patches: None,
        modified: None,
        reshaped: None,
    };
    // With no row changed, a table whose columns changed in pipeline.toml keeps its rows'
    // values, cast to the configured types (a new column is NULL): computed values follow a
    // changed expression when update_entity_property_expressions runs, which records the
    // change in the history as it does for any other expression change.
    let mut kept_as_stored = None;
    if changes.total() == 0 {
        let configured = apply_computed(ctx, staged.clone().select(decl_cols.clone())?, e)?;
        let configured = Arc::new(configured.schema().as_arrow().clone());
        plan.reshaped = reshaped(ctx, catalog, &e.name, &configured).await?;
        match plan.reshaped {
            None => return Ok(plan),
            Some(COLUMNS_CHANGED) => kept_as_stored = Some(configured),
            Some(_) => {}
        }
    } else {
        plan.modified = Some(
            rows.clone()
                .select(vec![col("_ck").alias("key"), col("_cc").alias("change")])?,
        );
    }

    let upserts = || -> Result<DataFrame> {
        Ok(staged
            .clone()
            .with_column("_k", key())?
            .join(
                rows.clone().filter(col("_cc").not_eq(lit("delete")))?,
                JoinType::LeftSemi,
                &["_k"],
                &["_ck"],
                None,
            )?
            .select(decl_cols.clone())?)
    };
    let history_name = format!("{}__history", e.name);
    let patchable = incremental
        && rc.pipeline.deletion_vectors
        && kept_as_stored.is_none()
        && !rc.dry_run
        && [&e.name, &history_name]
            .iter()
            .all(|t| catalog.tables.get(*t).is_some_and(|v| *v != u64::MAX));
    if patchable
        && let Some(patched) = patch_entity(
            ctx,
            rc,
            catalog,
            e,
            &key,
            upserts()?,
            rows.clone(),
            valid_from,
        )
        .await?
    {
        plan.new_state = Some(patched.state);
        plan.new_history = Some(patched.history);
        plan.patches = Some(patched.patches);
        return Ok(plan);
    }
    let new_declared = if incremental {
        let kept = rows
            .clone()
            .join(
                current.clone().with_column("_k", key())?,
                JoinType::RightAnti,
                &["_ck"],
                &["_k"],
                None,
            )?
            .select(decl_cols.clone())?;
        kept.union(upserts()?)?
    } else {
        staged.clone().select(decl_cols.clone())?
    };
    let new_state = match &kept_as_stored {
        Some(configured) => stored_as(ctx, &e.name, configured).await?,
        None => apply_computed(ctx, new_declared.clone(), e)?,
    }
    .sort(vec![quoted(&e.key).sort(true, true)])?;
    let state_schema = Arc::new(new_state.schema().as_arrow().clone());
    let state_batches = match new_state.clone().collect().await {
        Ok(batches) => batches,
        Err(failed) => {
            let file = &rc.pipeline.file;
            return Err(
                engine::expr::computed_failure(ctx, file, new_declared, e, failed.into()).await,
            );
        }
    };
    let old_full = committed(ctx, catalog, &e.name, &state_schema).await?;
    let history = next_history(
        ctx,
        catalog,
        &history_name,
        &key,
        vec![quoted(&e.key)],
        (&state_schema, &state_batches),
        old_full,
        rows,
        &rc.run_id,
        valid_from,
        None,
    )
    .await?;
    plan.new_state = Some((state_schema, state_batches));
    plan.new_history = Some(history);
    Ok(plan)
}

/// An incremental synchronization's changes of an entity, as patches of its committed state
/// and history (see [`crate::store::Patch`]).
struct PatchedEntity {
    /// The inserted and updated rows, with their computed columns, sorted by key.
    state: (SchemaRef, Vec<RecordBatch>),
    /// The changed keys' history rows: the committed ones (the open version closed) and the
    /// versions this run opens.
    history: Rows,
    /// The state's patch, then the history's.
    patches: (Box<Patch>, Box<Patch>),
}

/// The changes `ch` (`_ck`, `_cc`) of entity `e` as patches: in the state, the updated and
/// deleted keys' rows are replaced by the `upserts` (with their computed columns); in the
/// history, every row of those keys is replaced by the same rows with the open version closed,
/// plus the versions opened now. Only the changed keys' rows are read (by position) and
/// written. `None` when a table cannot be patched.
#[allow(clippy::too_many_arguments)]
async fn patch_entity(
    ctx: &SessionContext,
    rc: &RunContext<'_>,
    catalog: &Catalog,
    e: &Entity,
    key: &dyn Fn() -> Expr,
    upserts: DataFrame,
    ch: DataFrame,
    valid_from: i64,
) -> Result<Option<PatchedEntity>> {
    let state =
        apply_computed(ctx, upserts.clone(), e)?.sort(vec![quoted(&e.key).sort(true, true)])?;
    let schema = Arc::new(state.schema().as_arrow().clone());
    let batches = match state.collect().await {
        Ok(batches) => batches,
        Err(failed) => {
            let file = &rc.pipeline.file;
            return Err(engine::expr::computed_failure(ctx, file, upserts, e, failed.into()).await);
        }
    };
    let replaced = ch
        .clone()
        .filter(col("_cc").in_list(vec![lit("update"), lit("delete")], false))?
        .select(vec![col("_ck")])?;
    let on = [e.key.as_str()];
    let version = |t: &str| catalog.tables.get(t).copied().unwrap_or_default();
    let history_name = format!("{}__history", e.name);
    let history_schema = history_schema(&schema);
    // The state's and the history's rows of the replaced keys, looked up at once: each lookup
    // is parallel only in its decoding, and leaves a core idle between its steps.
    let found = |name: &str, schema: &SchemaRef| {
        let (name, schema, replaced) = (name.to_string(), schema.clone(), replaced.clone());
        async move {
            let Some(patch) = rc
                .store
                .find_replaced(&name, version(&name), replaced, &on, &schema)
                .await?
            else {
                return Ok::<_, crate::error::Error>(None);
            };
            let rows = rc.store.replaced_rows(&name, &patch, &schema).await?;
            Ok(Some((patch, rows)))
        }
    };
    let (state_found, history_found) = futures::try_join!(
        found(&e.name, &schema),
        found(&history_name, &history_schema)
    )?;
    let (Some((state_patch, old_rows)), Some((history_patch, old_history))) =
        (state_found, history_found)
    else {
        return Ok(None);
    };
    let history = next_history(
        ctx,
        catalog,
        &history_name,
        key,
        vec![quoted(&e.key)],
        (&schema, &batches),
        frame(ctx, &schema, &old_rows)?,
        ch,
        &rc.run_id,
        valid_from,
        Some(frame(ctx, &history_schema, &old_history)?),
    )
    .await?;
    Ok(Some(PatchedEntity {
        state: (schema, batches),
        history,
        patches: (Box::new(state_patch), Box::new(history_patch)),
    }))
}

/// `new_keys__<entity>` from a planned entity: its new state, or the committed one if unchanged.
async fn register_planned_keys(
    ctx: &SessionContext,
    catalog: &Catalog,
    e: &Entity,
    p: &TablePlan,
) -> Result<()> {
    let name = format!("new_keys__{}", e.name);
    let _ = ctx.deregister_table(name.as_str())?;
    let keys = |df: DataFrame| -> Result<DataFrame> {
        Ok(df.select(vec![cast(quoted(&e.key), DataType::Utf8).alias("_key")])?)
    };
    let committed_keys = || async {
        keys(committed(ctx, catalog, &e.name, &engine::expr::declared_schema(e)).await?)
    };
    let df = match (&p.new_state, &p.patches, &p.modified) {
        // A patch: the committed keys but the changed ones, and the inserted and updated.
        (Some((schema, batches)), Some(_), Some(modified)) => committed_keys()
            .await?
            .join(
                modified
                    .clone()
                    .select(vec![col("key").alias("_changed")])?,
                JoinType::LeftAnti,
                &["_key"],
                &["_changed"],
                None,
            )?
            .union(keys(frame(ctx, schema, batches)?)?)?,
        (Some((schema, batches)), _, _) => keys(frame(ctx, schema, batches)?)?,
        _ => committed_keys().await?,
    };
    ctx.register_table(name, df.into_view())?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn plan_link(
    ctx: &SessionContext,
    rc: &RunContext<'_>,
    catalog: &Catalog,
    l: &Link,
    staged_table: Option<PreparedTable>,
    endpoints_checked: bool,
    mode: SyncMode,
    valid_from: i64,
) -> Result<TablePlan> {
    let schema = Arc::new(Schema::new(vec![
        Field::new(&l.from.column, DataType::Utf8, true),
        Field::new(&l.to.column, DataType::Utf8, true),
    ]));
    let (f, t) = (l.from.column.as_str(), l.to.column.as_str());
    let pair = || vec![quoted(f), quoted(t)];
    let key = || {
        concat(vec![
            coalesce(vec![quoted(f), lit("")]),
            lit(PAIR_SEP),
            coalesce(vec![quoted(t), lit("")]),
        ])
    };
    let encode = |df: DataFrame, with_command: bool| -> Result<DataFrame> {
        let mut exprs = vec![
            key().alias("_key"),
            engine::row_values_udf().call(pair()).alias("_values"),
        ];
        if with_command {
            // An incremental file may list a pair twice; states are sets already.
            exprs.push(col(COMMAND));
            return Ok(df.select(exprs)?.distinct()?);
        }
        Ok(df.select(exprs)?)
    };
    let current = committed(ctx, catalog, &l.name, &schema).await?;
    let base_rows = current.clone().count().await? as u64;
    let incremental = mode == SyncMode::Incremental && staged_table.is_some();
    // The committed pairs under other names, for joins with a frame of pairs.
    let other = |df: DataFrame| -> Result<DataFrame> {
        Ok(df.select(vec![quoted(f).alias("_of"), quoted(t).alias("_ot")])?)
    };

    let mut warnings = Vec::new();
    let staged_rows = staged_table.as_ref().map(PreparedTable::num_rows);
    let parsed_pairs = staged_table.is_some() && endpoints_checked && !incremental;
    let desired = match staged_table {
        None => current.clone(),
        // Pairs this task parsed and checked go to the sort as the dictionaries they were
        // parsed into: each batch's values are looked up once, not each row's.
        Some(b) if parsed_pairs => b.encoded_frame(ctx)?.select(pair())?,
        Some(b) => {
            let staged = b.frame(ctx)?;
            if incremental {
                // Warnings need only the committed pairs the file names.
                let named = other(staged.clone())?.join(
                    current.clone(),
                    JoinType::RightSemi,
                    &["_of", "_ot"],
                    &[f, t],
                    None,
                )?;
                let batches = change_set(
                    ctx,
                    encode(staged.clone(), true)?,
                    encode(named, false)?,
                    INCREMENTAL_SQL,
                )
                .await?;
                warnings = read_changes(ctx, &l.name, &batches)?.warnings;
                let removed = other(staged.clone().filter(col(COMMAND).eq(lit("delete")))?)?;
                let added = staged
                    .filter(col(COMMAND).not_eq(lit("delete")))?
                    .select(pair())?;
                removed
                    .join(
                        current.clone(),
                        JoinType::RightAnti,
                        &["_of", "_ot"],
                        &[f, t],
                        None,
                    )?
                    .select(pair())?
                    .union(added)?
            } else {
                staged.select(pair())?
            }
        }
    };
    // Pairs whose endpoint is gone disappear with it (SPEC section 4), in every mode. The keys
    // are the hash tables: there are far fewer of them than pairs.
    let desired = if endpoints_checked {
        desired
    } else {
        let from_keys = ctx
            .table(format!("new_keys__{}", l.from.entity))
            .await?
            .select(vec![col("_key").alias("_fk")])?;
        let to_keys = ctx
            .table(format!("new_keys__{}", l.to.entity))
            .await?
            .select(vec![col("_key").alias("_tk")])?;
        engine::as_written(to_keys.join(
            from_keys.join(desired, JoinType::RightSemi, &["_fk"], &[f], None)?,
            JoinType::RightSemi,
            &["_tk"],
            &[t],
            None,
        )?)
    };
    let mut phases = super::Phases::new("synchronize");
    // Sorted, each pair once; gathered on all cores (nothing else runs in this task meanwhile).
    let (encoded, desired_batches) =
        engine::sorted_distinct_on(ctx, desired, engine::threads()).await?;
    phases.done("link pairs sorted");
    // The pairs stay dictionary-encoded until they are written; frames decode them as read.
    let desired_schema = engine::decoded_schema(&encoded);
    let desired = frame(ctx, &desired_schema, &desired_batches)?;

    // A pair has no values: it is inserted or deleted, found by a merge of the sorted pairs
    // with the stored ones, which the table keeps in the same order (on a first load every
    // desired pair is inserted). Should the stored pairs not be in order, by anti-joins.
    let merged = if base_rows == 0 {
        None
    } else {
        let stored = engine::stream_in_order(ctx, current.clone()).await?;
        engine::sorted_difference(&desired_schema, &desired_batches, stored).await?
    };
    let (added, removed) = if base_rows == 0 {
        (desired.clone(), current.clone())
    } else if let Some((added, removed)) = &merged {
        (
            frame(ctx, &desired_schema, added)?,
            frame(ctx, &desired_schema, removed)?,
        )
    } else {
        let added = other(current.clone())?.join(
            desired.clone(),
            JoinType::RightAnti,
            &["_of", "_ot"],
            &[f, t],
            None,
        )?;
        let removed = other(desired.clone())?.join(
            current.clone(),
            JoinType::RightAnti,
            &["_of", "_ot"],
            &[f, t],
            None,
        )?;
        (
            super::role_model::materialize(ctx, added).await?,
            super::role_model::materialize(ctx, removed).await?,
        )
    };
    let inserted = added.clone().count().await? as u64;
    let deleted = removed.clone().count().await? as u64;
    phases.done("link diff");
    let mut plan = TablePlan {
        name: l.name.clone(),
        thresholds: l.thresholds.clone(),
        base_rows,
        staged_rows,
        inserted,
        updated: 0,
        deleted,
        warnings,
        new_state: None,
        new_history: None,
        patches: None,
        modified: None,
        reshaped: None,
    };
    let tagged = |df: DataFrame, change: &str, key: Expr| -> Result<DataFrame> {
        Ok(df.select(vec![key, lit(change).alias("_cc")])?)
    };
    if inserted + deleted == 0 {
        plan.reshaped = reshaped(ctx, catalog, &l.name, &schema).await?;
        if plan.reshaped.is_none() {
            return Ok(plan);
        }
    } else {
        // recently_modified names the `from` key of each changed pair. Pairs in order (a first
        // load's, or a merge's sides) list each key's pairs together: its keys are read off
        // them, each once, with no grouping.
        let sorted_sides = match &merged {
            Some((added, removed)) => Some((added.as_slice(), removed.as_slice())),
            None if base_rows == 0 => Some((desired_batches.as_slice(), &[][..])),
            None => None,
        };
        plan.modified = Some(match sorted_sides {
            Some((added, removed)) if desired_schema.field(0).name() == f => {
                let key = desired_schema.field(0).clone().with_name("key");
                let changed = Arc::new(Schema::new(vec![
                    key.clone(),
                    Field::new("change", DataType::Utf8, false),
                ]));
                let mut batches = Vec::new();
                for (side, change) in [(added, "insert"), (removed, "delete")] {
                    for keys in engine::distinct_adjacent(side, f)? {
                        let n = keys.len();
                        // A merge's removed pairs are read from the store (possibly as views).
                        let keys = datafusion::arrow::compute::cast(&keys, key.data_type())?;
                        let changes = Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                            change, n,
                        )));
                        batches.push(RecordBatch::try_new(changed.clone(), vec![keys, changes])?);
                    }
                }
                frame(ctx, &changed, &batches)?
            }
            _ => tagged(added.clone(), "insert", quoted(f).alias("key"))?
                .union(tagged(removed.clone(), "delete", quoted(f).alias("key"))?)?
                .select(vec![col("key"), col("_cc").alias("change")])?
                .distinct()?,
        });
    }
    let rows = tagged(added, "insert", key().alias("_ck"))?.union(tagged(
        removed,
        "delete",
        key().alias("_ck"),
    )?)?;
    let history_name = format!("{}__history", l.name);
    let spliced = match &merged {
        Some(sides) => {
            link_history(
                ctx,
                catalog,
                &history_name,
                &desired_schema,
                (f, t),
                sides,
                &rc.run_id,
                valid_from,
            )
            .await?
        }
        None => None,
    };
    let history = match spliced {
        Some(history) => history,
        None => {
            next_history(
                ctx,
                catalog,
                &history_name,
                &key,
                pair(),
                (&desired_schema, &desired_batches),
                current,
                rows,
                &rc.run_id,
                valid_from,
                None,
            )
            .await?
        }
    };
    phases.done("link history");
    plan.new_state = Some((schema, desired_batches));
    plan.new_history = Some(history);
    Ok(plan)
}

/// Loads the staging tables `prepare_synchronization` wrote in this run.
async fn load_staging(
    rc: &RunContext<'_>,
    catalog: &Catalog,
    connector: &str,
    mode: SyncMode,
) -> Result<Prepared> {
    let ctx = engine::context();
    let mut prepared = Prepared::new(connector, mode);
    if let Some(s) = catalog.staged.get(connector) {
        prepared.held = s.held.clone();
    }
    let names: Vec<(String, bool)> = rc
        .pipeline
        .connector_entities(connector)
        .map(|e| (e.name.clone(), true))
        .chain(
            rc.pipeline
                .connector_links(connector)
                .map(|l| (l.name.clone(), false)),
        )
        .collect();
    for (name, is_entity) in names {
        let staging = format!("{name}__staging");
        let provider = rc
            .store
            .provider(&ctx, catalog, &staging)
            .await?
            .ok_or_else(|| Error::store(format!("staging table {staging} is missing")))?;
        let schema = provider.schema();
        let batches = ctx.read_table(provider)?.collect().await?;
        let rows_read = batches.iter().map(|b| b.num_rows() as u64).sum();
        let t = PreparedTable {
            name,
            schema,
            batches,
            rows_read,
        };
        if is_entity {
            prepared.entities.push(t);
        } else {
            prepared.links.push(t);
        }
    }
    Ok(prepared)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::TimestampMicrosecondType;

    /// A first load's history columns, built once and sliced: batches shorter and longer
    /// than the ones before get their own rows' values, with the state's columns as given.
    #[test]
    fn first_load_history_columns_fit_every_batch() {
        let state = Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, true)]));
        let history = history_schema(&state);
        let sizes = [3usize, 1, 5, 0, 2, 8];
        let longest = sizes.into_iter().max().unwrap();
        let map = opened_on_first_load(history.clone(), "run-1", 42, longest);
        for n in sizes {
            let keys = StringArray::from_iter_values((0..n).map(|i| format!("k{n}-{i}")));
            let batch = RecordBatch::try_new(state.clone(), vec![Arc::new(keys.clone())]).unwrap();
            let out = map(&batch).unwrap();
            assert_eq!(out.schema(), history);
            assert_eq!(out.num_rows(), n);
            assert_eq!(out.column(0).as_string::<i32>(), &keys);
            let from = out.column(1).as_primitive::<TimestampMicrosecondType>();
            assert!(
                from.iter().all(|v| v == Some(42)),
                "_valid_from of {n} rows"
            );
            assert_eq!(out.column(2).null_count(), n, "_valid_to of {n} rows");
            let change = out.column(3).as_string::<i32>();
            assert!(change.iter().all(|v| v == Some("insert")));
            let run = out.column(4).as_string::<i32>();
            assert!(run.iter().all(|v| v == Some("run-1")));
            for c in out.columns() {
                assert_eq!(c.len(), n);
            }
        }
    }
}
