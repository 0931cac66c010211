//! `prepare_synchronization`: read and validate a connector's export files into staging tables.
//!
//! The result, [`Prepared`], holds the good rows of every entity and link file of the connector
//! and the bad ones with their reasons. Link rows are checked here too: an endpoint that names a
//! key absent from the entity's state after this synchronization is a bad row. With
//! `on_bad_row = "fail"` any bad row fails the task (exit 2) before anything is written.

use std::sync::Arc;

use datafusion::arrow::array::{AsArray, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::prelude::*;

use super::frames::frame;
use super::{RunContext, TaskOutcome, TaskStatus};
use crate::config::{Entity, Link, SyncMode, Task};
use crate::engine;
use crate::error::{Error, Result};
use crate::input::csv::{self, COMMAND, CsvSpec, LINE, Loaded, Rejected};
use crate::store::{Catalog, CatalogChange, Staged, WriteMode};

pub struct PreparedTable {
    pub name: String,
    /// Declared columns (links: the two endpoint columns), `_line`, and `_command` when
    /// incremental. Good rows only, in batches with buffers of their own (see [`Loaded`]).
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub rows_read: u64,
}

impl PreparedTable {
    pub fn num_rows(&self) -> u64 {
        self.batches.iter().map(|b| b.num_rows() as u64).sum()
    }

    pub fn frame(&self, ctx: &SessionContext) -> Result<DataFrame> {
        frame(ctx, &self.schema, &self.batches)
    }

    /// [`Self::frame`] with the batches' own types: a link's text columns stay the
    /// dictionaries they were parsed into ([`csv::CsvSpec::dictionary`]).
    pub fn encoded_frame(&self, ctx: &SessionContext) -> Result<DataFrame> {
        let schema = self
            .batches
            .first()
            .map_or_else(|| self.schema.clone(), RecordBatch::schema);
        Ok(ctx.read_table(engine::mem_table(schema, self.batches.clone())?)?)
    }

    /// This table with its rows, leaving none here.
    pub fn take(&mut self) -> Self {
        Self {
            name: self.name.clone(),
            schema: self.schema.clone(),
            batches: std::mem::take(&mut self.batches),
            rows_read: self.rows_read,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RejectedRow {
    pub table: String,
    pub file: String,
    pub line: u64,
    pub reason: String,
    pub raw: String,
    /// The row's key as written (entities), for anonymized owners' lines.
    pub key: Option<String>,
}

pub struct Prepared {
    pub connector: String,
    pub mode: SyncMode,
    pub entities: Vec<PreparedTable>,
    pub links: Vec<PreparedTable>,
    pub rejected: Vec<RejectedRow>,
    /// Held keys recorded by `prepare_synchronization` (staged tables keep no rejected line).
    pub held: std::collections::BTreeMap<String, Vec<String>>,
}

impl Prepared {
    pub fn new(connector: &str, mode: SyncMode) -> Self {
        Self {
            connector: connector.to_string(),
            mode,
            entities: Vec::new(),
            links: Vec::new(),
            rejected: Vec::new(),
            held: Default::default(),
        }
    }

    pub fn entity(&self, name: &str) -> Option<&PreparedTable> {
        self.entities.iter().find(|t| t.name == name)
    }
    pub fn rows_read(&self) -> u64 {
        self.entities
            .iter()
            .chain(&self.links)
            .map(|t| t.rows_read)
            .sum()
    }
}

pub async fn run(rc: &RunContext<'_>, task: &Task) -> Result<TaskOutcome> {
    let connector = task.connector.as_deref().expect("invariant: validated");
    let catalog = rc.store.catalog().await?;
    let prepared = prepare(rc, &catalog, connector, task.mode).await?;
    let rows_read = prepared.rows_read();
    let rejected = prepared.rejected.len() as u64;
    let mut rows_written = 0;
    if !rc.dry_run {
        let mut change = CatalogChange {
            run_id: rc.run_id.clone(),
            what: format!("prepare:{connector}"),
            ..Default::default()
        };
        rows_written = write_staging(rc, &catalog, &prepared, &mut change).await?;
        rc.store.commit(&catalog, change).await?;
    }
    let good: u64 = prepared
        .entities
        .iter()
        .chain(&prepared.links)
        .map(|t| t.num_rows())
        .sum();
    Ok(TaskOutcome {
        status: if rejected > 0 {
            TaskStatus::Warning
        } else {
            TaskStatus::Succeeded
        },
        rows_read,
        rows_written,
        changes: 0,
        message: format!(
            "{connector}: {good} rows staged{}",
            if rejected > 0 {
                format!(", {rejected} rejected (see rejected_rows)")
            } else {
                String::new()
            }
        ),
        exit_code: 0,
    })
}

/// Writes `<table>__staging` for every file and appends the bad rows to `rejected_rows`;
/// records the Delta versions in `change`. Returns the rows written.
pub async fn write_staging(
    rc: &RunContext<'_>,
    catalog: &Catalog,
    prepared: &Prepared,
    change: &mut CatalogChange,
) -> Result<u64> {
    let mut written = 0;
    for t in prepared.entities.iter().chain(&prepared.links) {
        let name = format!("{}__staging", t.name);
        let v = rc
            .store
            .write_table(
                catalog,
                &name,
                t.schema.clone(),
                t.batches.clone(),
                WriteMode::Overwrite,
                &rc.run_id,
            )
            .await?;
        change.tables.insert(name, v);
        written += t.num_rows();
    }
    if !prepared.rejected.is_empty() {
        let batch = rejected_rows_batch(&rc.run_id, &prepared.connector, &prepared.rejected)?;
        let v = rc
            .store
            .write_table(
                catalog,
                "rejected_rows",
                batch.schema(),
                vec![batch.clone()],
                WriteMode::Append,
                &rc.run_id,
            )
            .await?;
        change.tables.insert("rejected_rows".into(), v);
        written += batch.num_rows() as u64;
    }
    change.staged.insert(
        prepared.connector.clone(),
        Staged {
            run_id: rc.run_id.clone(),
            mode: prepared.mode.name().into(),
            held: prepared
                .entities
                .iter()
                .map(|t| (t.name.clone(), prepared.held_keys(&t.name)))
                .filter(|(_, keys)| !keys.is_empty())
                .collect(),
        },
    );
    Ok(written)
}

pub fn rejected_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, true),
        Field::new("connector", DataType::Utf8, true),
        Field::new("table_name", DataType::Utf8, true),
        Field::new("file", DataType::Utf8, true),
        Field::new("line", DataType::Int64, true),
        Field::new("reason", DataType::Utf8, true),
        Field::new("raw", DataType::Utf8, true),
    ]))
}

pub fn rejected_rows_batch(
    run_id: &str,
    connector: &str,
    rows: &[RejectedRow],
) -> Result<RecordBatch> {
    let n = rows.len();
    let batch = RecordBatch::try_new(
        rejected_schema(),
        vec![
            Arc::new(StringArray::from(vec![run_id; n])),
            Arc::new(StringArray::from(vec![connector; n])),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.table.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.file.as_str()),
            )),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.line as i64),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.reason.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.raw.as_str()),
            )),
        ],
    )
    .map_err(|e| Error::store(e.to_string()))?;
    Ok(batch)
}

/// Reads and validates every file of `connector`.
pub async fn prepare(
    rc: &RunContext<'_>,
    catalog: &Catalog,
    connector: &str,
    mode: SyncMode,
) -> Result<Prepared> {
    let pipeline = rc.pipeline;
    let exports = &pipeline.connectors[connector].exports;
    let incremental = mode == SyncMode::Incremental;
    let mut prepared = Prepared::new(connector, mode);

    for e in pipeline.connector_entities(connector) {
        let spec = CsvSpec {
            file: exports.join(&e.file),
            columns: e.columns.iter().map(|c| (c.name.clone(), c.ty)).collect(),
            key: Some(e.key.clone()),
            command_column: incremental.then(|| e.csv.command_column.clone()),
            split: Vec::new(),
            dictionary: false,
            options: e.csv.clone(),
        };
        let loaded = csv::load(spec).await?;
        let first = prepared.rejected.len();
        push_rejected(
            &mut prepared.rejected,
            &e.name,
            &loaded.file,
            &loaded.rejected,
        );
        // Anonymized stays anonymized (SPEC section 9): in the stored rejected rows, and in the
        // message that fails the file (stored as the task's message).
        super::anonymize::protect_rejected(rc, catalog, e, &mut prepared.rejected[first..]).await?;
        let protected: Vec<csv::Rejected> = prepared.rejected[first..]
            .iter()
            .map(|r| csv::Rejected {
                line: r.line,
                reason: r.reason.clone(),
                raw: r.raw.clone(),
                key: r.key.clone(),
            })
            .collect();
        csv::fail_on_bad_rows(&loaded.file, &protected, e.csv.on_bad_row)?;
        let batches = super::anonymize::protect_incoming(rc, catalog, e, &loaded).await?;
        prepared.entities.push(PreparedTable {
            name: e.name.clone(),
            schema: loaded.schema.clone(),
            batches,
            rows_read: loaded.rows_read,
        });
    }

    // Keys each entity will have after this synchronization, for link endpoint checks.
    let ctx = engine::context();
    for e in &pipeline.entities {
        register_new_keys(&ctx, rc, catalog, &prepared, e, mode).await?;
    }

    for l in pipeline.connector_links(connector) {
        let mut split = Vec::new();
        for ep in [&l.from, &l.to] {
            if let Some(sep) = &ep.separator {
                split.push((ep.column.clone(), sep.clone()));
            }
        }
        let spec = CsvSpec {
            file: exports.join(&l.file),
            columns: vec![
                (l.from.column.clone(), crate::config::ColumnType::String),
                (l.to.column.clone(), crate::config::ColumnType::String),
            ],
            key: None,
            command_column: incremental.then(|| l.csv.command_column.clone()),
            split,
            dictionary: true,
            options: l.csv.clone(),
        };
        let loaded = csv::load(spec).await?;
        let (batches, mut endpoint_rejects) = check_endpoints(&ctx, l, &loaded).await?;
        let mut all = loaded.rejected.clone();
        all.append(&mut endpoint_rejects);
        csv::fail_on_bad_rows(&loaded.file, &all, l.csv.on_bad_row)?;
        push_rejected(&mut prepared.rejected, &l.name, &loaded.file, &all);
        prepared.links.push(PreparedTable {
            name: l.name.clone(),
            schema: loaded.schema.clone(),
            batches,
            rows_read: loaded.rows_read,
        });
    }
    Ok(prepared)
}

fn push_rejected(
    out: &mut Vec<RejectedRow>,
    table: &str,
    file: &std::path::Path,
    rows: &[Rejected],
) {
    let file = file
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut rows: Vec<&Rejected> = rows.iter().collect();
    rows.sort_by_key(|r| r.line);
    out.extend(rows.into_iter().map(|r| RejectedRow {
        table: table.to_string(),
        file: file.clone(),
        line: r.line,
        reason: r.reason.clone(),
        raw: r.raw.clone(),
        key: r.key.clone(),
    }));
}

impl Prepared {
    /// Under quarantine, the keys of a complete export's rejected lines of `table` (as
    /// written). Such a key is still exported, only this version of its row is bad: its stored
    /// row is held as it is, not deleted, and the run ends `warning` with the line in
    /// `rejected_rows`.
    pub fn held_keys(&self, table: &str) -> Vec<String> {
        if self.mode != SyncMode::Complete {
            return Vec::new();
        }
        let mut keys: Vec<String> = self
            .rejected
            .iter()
            .filter(|r| r.table == table)
            .filter_map(|r| r.key.clone())
            .filter(|k| !k.is_empty())
            .chain(self.held.get(table).into_iter().flatten().cloned())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }
}

/// The stored rows of `current` whose key (`key`, as text) is one of `held` and not one of
/// `staged`'s, with `staged`'s columns (those it lacks are NULL): the rows a complete export's
/// rejected lines hold ([`Prepared::held_keys`]).
pub fn held_rows(
    ctx: &SessionContext,
    current: DataFrame,
    staged: DataFrame,
    key: &dyn Fn() -> Expr,
    held: &[String],
) -> Result<DataFrame> {
    let held = ctx.read_batch(RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new(
            "_held",
            DataType::Utf8,
            false,
        )])),
        vec![Arc::new(StringArray::from_iter_values(held))],
    )?)?;
    let staged_keys = staged.clone().select(vec![key().alias("_staged")])?;
    let have = current.schema().clone();
    let columns: Vec<Expr> = staged
        .schema()
        .fields()
        .iter()
        .map(|f| {
            let value = if have.has_column_with_unqualified_name(f.name()) {
                col(format!("\"{}\"", f.name()))
            } else {
                lit(datafusion::common::ScalarValue::Null)
            };
            cast(value, f.data_type().clone()).alias(f.name())
        })
        .collect();
    Ok(held
        .join(
            current.with_column("_held_key", key())?,
            JoinType::RightSemi,
            &["_held"],
            &["_held_key"],
            None,
        )?
        .join(
            staged_keys,
            JoinType::LeftAnti,
            &["_held_key"],
            &["_staged"],
            None,
        )?
        .select(columns)?)
}

/// Registers `new_keys__<entity>(_key)`: the entity's keys after this synchronization.
pub async fn register_new_keys(
    ctx: &SessionContext,
    rc: &RunContext<'_>,
    catalog: &Catalog,
    prepared: &Prepared,
    e: &Entity,
    mode: SyncMode,
) -> Result<()> {
    let key_text = || cast(col(format!("\"{}\"", e.key)), DataType::Utf8).alias("_key");
    let current = match rc.store.provider(ctx, catalog, &e.name).await? {
        Some(p) => Some(ctx.read_table(p)?.select(vec![key_text()])?),
        None => None,
    };
    let staged = match prepared.entity(&e.name) {
        Some(t) => Some(t.frame(ctx)?),
        None => None,
    };
    let empty = || -> Result<DataFrame> {
        let schema = Arc::new(Schema::new(vec![Field::new("_key", DataType::Utf8, true)]));
        Ok(ctx.read_batch(RecordBatch::new_empty(schema))?)
    };
    let held = prepared.held_keys(&e.name);
    let keys = match (staged, mode) {
        (None, _) => current.map_or_else(empty, Ok)?,
        (Some(s), SyncMode::Complete) if !held.is_empty() && current.is_some() => {
            let key = || cast(col(format!("\"{}\"", e.key)), DataType::Utf8);
            let stored = ctx.read_table(
                rc.store
                    .provider(ctx, catalog, &e.name)
                    .await?
                    .expect("invariant: current is some"),
            )?;
            let kept = held_rows(ctx, stored, s.clone(), &key, &held)?;
            s.union(kept)?.select(vec![key_text()])?
        }
        (Some(s), SyncMode::Complete | SyncMode::Initial) => s.select(vec![key_text()])?,
        (Some(s), SyncMode::Incremental) => {
            let deleted = s
                .clone()
                .filter(col(COMMAND).eq(lit("delete")))?
                .select(vec![key_text()])?;
            let upserts = s
                .filter(col(COMMAND).not_eq(lit("delete")))?
                .select(vec![key_text()])?;
            let kept = match current {
                Some(c) => deleted.join(c, JoinType::RightAnti, &["_key"], &["_key"], None)?,
                None => empty()?,
            };
            kept.union(upserts)?
        }
    };
    ctx.register_table(format!("new_keys__{}", e.name), keys.into_view())?;
    Ok(())
}

/// Whether every value of `column` in `batches` is one of `keys` (`_key`), found from the
/// batches' dictionaries alone: a link's parsed pairs come as one dictionary a batch
/// ([`csv::CsvSpec::dictionary`]), whose values are far fewer than its rows (at 1M identities
/// ~1.2M accounts and ~3.2M groups over all batches, against 13.6M rows each). `false` when
/// a value is unknown — the rows are then checked one by one, for their lines — and when a
/// batch is not dictionary-encoded or the file has change commands (a delete needs no
/// endpoint).
async fn all_known(
    ctx: &SessionContext,
    keys: DataFrame,
    batches: &[RecordBatch],
    column: &str,
) -> Result<bool> {
    let values: Option<Vec<RecordBatch>> = batches
        .iter()
        .map(|b| {
            if b.column_by_name(COMMAND).is_some() {
                return None;
            }
            let values = b.column_by_name(column)?.as_any_dictionary_opt()?.values();
            let schema = Arc::new(Schema::new(vec![Field::new(
                "_v",
                values.data_type().clone(),
                true,
            )]));
            RecordBatch::try_new(schema, vec![Arc::clone(values)]).ok()
        })
        .collect();
    let Some(values) = values else {
        return Ok(false);
    };
    let Some(first) = values.first() else {
        return Ok(true);
    };
    let values = ctx.read_table(engine::mem_table(first.schema(), values)?)?;
    let unknown = keys
        .join(values, JoinType::RightAnti, &["_key"], &["_v"], None)?
        .limit(0, Some(1))?;
    Ok(engine::as_written(unknown).count().await? == 0)
}

/// Splits link rows into those whose endpoints exist and rejected ones.
async fn check_endpoints(
    ctx: &SessionContext,
    l: &Link,
    loaded: &Loaded,
) -> Result<(Vec<RecordBatch>, Vec<Rejected>)> {
    let rows = frame(ctx, &loaded.schema, &loaded.batches)?;
    let mut rejects = Vec::new();
    let deletes_only = |df: DataFrame| -> Result<DataFrame> {
        // Removing a pair never needs its endpoints to exist.
        Ok(if df.schema().has_column_with_unqualified_name(COMMAND) {
            df.filter(col(COMMAND).not_eq(lit("delete")))?
        } else {
            df
        })
    };
    for ep in [&l.from, &l.to] {
        let keys = ctx.table(format!("new_keys__{}", ep.entity)).await?;
        if all_known(ctx, keys.clone(), &loaded.batches, &ep.column).await? {
            continue;
        }
        // The keys are the hash table: there are far fewer of them than link rows (whose
        // batches, dictionary-encoded, can look the smaller side to the join's statistics).
        let bad = keys
            .join(
                deletes_only(rows.clone())?
                    .filter(col(format!("\"{}\"", ep.column)).is_not_null())?,
                JoinType::RightAnti,
                &["_key"],
                &[&ep.column],
                None,
            )?
            .select(vec![col(LINE), col(format!("\"{}\"", ep.column))])?;
        let bad = engine::as_written(bad).collect().await?;
        for b in &bad {
            let lines = b
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("_line is i64");
            let values = b
                .column(1)
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("text");
            for i in 0..b.num_rows() {
                rejects.push(Rejected {
                    line: lines.value(i) as u64,
                    reason: format!(
                        "`{}` = `{}`: no {} has this key",
                        ep.column,
                        values.value(i),
                        ep.entity
                    ),
                    raw: loaded.raw_line(lines.value(i) as u64),
                    key: None,
                });
            }
        }
    }
    for ep in [&l.from, &l.to] {
        let nulls = rows
            .clone()
            .filter(col(format!("\"{}\"", ep.column)).is_null())?
            .select(vec![col(LINE)])?
            .collect()
            .await?;
        for b in &nulls {
            let lines = b
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("_line is i64");
            for i in 0..b.num_rows() {
                rejects.push(Rejected {
                    line: lines.value(i) as u64,
                    reason: format!("`{}` is empty", ep.column),
                    raw: loaded.raw_line(lines.value(i) as u64),
                    key: None,
                });
            }
        }
    }
    // One reason per line, the first found; the good rows are the rest.
    rejects.sort_by_key(|r| r.line);
    rejects.dedup_by_key(|r| r.line);
    let bad_lines: Vec<u64> = rejects.iter().map(|r| r.line).collect();
    let good = if bad_lines.is_empty() {
        loaded.batches.clone()
    } else {
        let bad: std::collections::HashSet<u64> = bad_lines.into_iter().collect();
        let keep_good = |batch: &RecordBatch| {
            let lines = batch
                .column_by_name(LINE)
                .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
                .expect("invariant: loaded batches carry _line");
            let keep: datafusion::arrow::array::BooleanArray = lines
                .iter()
                .map(|l| Some(!l.is_some_and(|l| bad.contains(&(l as u64)))))
                .collect();
            datafusion::arrow::compute::filter_record_batch(batch, &keep)
        };
        loaded
            .batches
            .iter()
            .map(keep_good)
            .collect::<std::result::Result<_, _>>()
            .map_err(datafusion::error::DataFusionError::from)?
    };
    Ok((good, rejects))
}
