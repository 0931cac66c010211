//! History anonymization and "anonymized stays anonymized" (SPEC section 9).
//!
//! `anonymized_owners` (`owner_key`, `status`, `run_id`, `scrubbed_run_id`) is the engine's own
//! record of anonymized owners: `update_identities` adds an owner with status 4
//! (HistoryAnonymizationNeeded) once none of its accounts waits for anonymized values to be
//! provisioned, and [`scrub_pending`] then removes the owner's personal data from the store and
//! sets status 5. Synchronization reads the table to anonymize the owner's incoming rows
//! ([`protect_incoming`], [`protect_rejected`]).
//!
//! What the scrub removes. The personal values are the owner's `anonymize` columns, in its
//! current row and in every history row (a former last name too). A row of any table belongs
//! to the owner when one of its text columns equals the owner's key or the key of an account
//! linked to it (`correlations`, `identity_states`); in such rows every occurrence of a
//! personal value (case ignored) becomes the `anonymize` value of its column (NULL → empty
//! text), and the owner tables' `anonymize` columns get their expressions. `rejected_rows` has
//! no parsed keys: its raw lines lose every pending owner's personal values, and so do the
//! tasks' messages (`task_runs.message`).
//!
//! Every table whose data files — of any retained Delta version — hold such a value gets a
//! scrubbed new version, and its older versions are removed (`Store::compact_before`); the
//! catalog records the first retained version (`floors`). Tables that never held the values
//! keep their history and time travel. Order files (JSON and Parquet) are rewritten in place.
//! All of it is one catalog commit; the compaction after it is idempotent and finished by
//! the next run if this one is killed.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::*;

use super::RunContext;
use super::frames::{collect, committed, frame, quoted};
use super::prepare_synchronization::RejectedRow;
use super::role_model::{materialize, union_all, view};
use crate::config::{Entity, Lifecycle};
use crate::engine;
use crate::error::{Error, Result};
use crate::input::csv::Loaded;
use crate::store::{Catalog, CatalogChange, WriteMode};

pub const OWNERS: &str = "anonymized_owners";

pub fn owners_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("owner_key", DataType::Utf8, true),
        Field::new("status", DataType::Int64, true),
        Field::new("run_id", DataType::Utf8, true),
        Field::new("scrubbed_run_id", DataType::Utf8, true),
    ]))
}

/// `(_anon_key, _anon_status)` of every anonymized owner (status 4 or 5).
pub async fn anonymized(ctx: &SessionContext, catalog: &Catalog) -> Result<DataFrame> {
    Ok(committed(ctx, catalog, OWNERS, &owners_schema())
        .await?
        .select(vec![
            col("owner_key").alias("_anon_key"),
            col("status").alias("_anon_status"),
        ])?)
}

/// The owner with its `anonymize` columns replaced, on the rows where `condition` holds.
pub(super) fn anonymize_columns(
    ctx: &SessionContext,
    df: DataFrame,
    entity: &Entity,
    lifecycle: &Lifecycle,
    condition: Expr,
) -> Result<DataFrame> {
    let schema = df.schema().clone();
    let mut exprs = Vec::new();
    for f in schema.fields() {
        let name = f.name();
        match lifecycle.anonymize.iter().find(|(c, _)| c == name) {
            Some((_, e)) => {
                let ty = declared_type(entity, name, f.data_type());
                let value = try_cast(ctx.parse_sql_expr(&e.text, &schema)?, ty.clone());
                exprs.push(
                    when(condition.clone(), value)
                        .otherwise(cast(quoted(name), ty))?
                        .alias(name),
                );
            }
            None => exprs.push(quoted(name)),
        }
    }
    Ok(df.select(exprs)?)
}

/// Anonymized stays anonymized: the incoming rows of the lifecycle owner whose key is
/// anonymized get the `anonymize` values before anything is stored.
pub async fn protect_incoming(
    rc: &RunContext<'_>,
    catalog: &Catalog,
    entity: &Entity,
    loaded: &Loaded,
) -> Result<Vec<RecordBatch>> {
    let Some(lifecycle) = owner_lifecycle(rc, entity) else {
        return Ok(loaded.batches.clone());
    };
    if !catalog.tables.contains_key(OWNERS) || loaded.batches.is_empty() {
        return Ok(loaded.batches.clone());
    }
    let ctx = engine::context_at(rc.as_of);
    rc.store.register(&ctx, catalog, OWNERS).await?;
    let keys = anonymized(&ctx, catalog).await?;
    let schema = &loaded.schema;
    let incoming = frame(&ctx, schema, &loaded.batches)?;
    let names: Vec<Expr> = schema.fields().iter().map(|f| quoted(f.name())).collect();
    let joined = incoming
        .join_on(
            keys,
            JoinType::Left,
            vec![cast(quoted(&entity.key), DataType::Utf8).eq(col("_anon_key"))],
        )?
        .sort(vec![col("_line").sort(true, false)])?;
    let protected = anonymize_columns(
        &ctx,
        joined.select(
            names
                .iter()
                .cloned()
                .chain([col("_anon_key")])
                .collect::<Vec<_>>(),
        )?,
        entity,
        lifecycle,
        col("_anon_key").is_not_null(),
    )?
    .select(names)?;
    let batches = protected.collect().await?;
    Ok(batches
        .iter()
        .map(|b| engine::cast_batch(b, schema))
        .collect::<std::result::Result<_, _>>()?)
}

/// Rejected lines of anonymized owners keep their line number and reason, not their text.
pub async fn protect_rejected(
    rc: &RunContext<'_>,
    catalog: &Catalog,
    entity: &Entity,
    rows: &mut [RejectedRow],
) -> Result<()> {
    if owner_lifecycle(rc, entity).is_none() {
        return Ok(());
    }
    if !catalog.tables.contains_key(OWNERS)
        || !rows
            .iter()
            .any(|r| r.table == entity.name && r.key.is_some())
    {
        return Ok(());
    }
    let ctx = engine::context();
    rc.store.register(&ctx, catalog, OWNERS).await?;
    let keys = Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, true)]));
    let candidates = RecordBatch::try_new(
        keys.clone(),
        vec![Arc::new(datafusion::arrow::array::StringArray::from(
            rows.iter()
                .filter(|r| r.table == entity.name)
                .map(|r| r.key.clone())
                .collect::<Vec<_>>(),
        ))],
    )?;
    let hits = frame(&ctx, &keys, &[candidates])?
        .join(
            anonymized(&ctx, catalog).await?,
            JoinType::LeftSemi,
            &["k"],
            &["_anon_key"],
            None,
        )?
        .collect()
        .await?;
    let mut anonymized_keys = std::collections::HashSet::new();
    for b in &hits {
        anonymized_keys.extend(text_column(b, 0)?.into_iter().flatten());
    }
    for r in rows.iter_mut().filter(|r| r.table == entity.name) {
        if r.key.as_ref().is_some_and(|k| anonymized_keys.contains(k)) {
            r.raw = "(anonymized owner: line not kept)".into();
            // A reason quoting a value may quote a personal one, whichever column it is in
            // (a line shifted by one field puts the name in a number column).
            if let Some((c, _)) = r
                .reason
                .strip_prefix("column `")
                .and_then(|rest| rest.split_once('`'))
            {
                r.reason = format!("column `{c}`: value not kept (anonymized owner)");
            }
        }
    }
    Ok(())
}

/// The declared type of an entity column, else `fallback`.
fn declared_type(entity: &Entity, column: &str, fallback: &DataType) -> DataType {
    entity
        .columns
        .iter()
        .find(|c| c.name == column)
        .map(|c| c.ty.data_type())
        .unwrap_or_else(|| fallback.clone())
}

fn owner_lifecycle<'a>(rc: &'a RunContext<'_>, entity: &Entity) -> Option<&'a Lifecycle> {
    rc.pipeline
        .model
        .lifecycle
        .as_ref()
        .filter(|l| l.owner == entity.name && !l.anonymize.is_empty())
}

/// What one history anonymization did (counts only, never values).
#[derive(Debug, Default)]
pub struct ScrubReport {
    pub owners: u64,
    pub tables: u64,
    pub rows: u64,
    pub versions: u64,
    pub files: u64,
    pub order_files: u64,
}

impl ScrubReport {
    pub fn message(&self) -> String {
        format!(
            "history anonymization: {} owner(s), {} row(s) scrubbed in {} table(s), {} older version(s) and {} data file(s) removed, {} order file(s) rewritten",
            self.owners, self.rows, self.tables, self.versions, self.files, self.order_files
        )
    }
}

/// Scrubs the owners at status 4 from the whole store and sets them to 5; finishes the
/// compactions a killed run left. `None` when there was nothing to do.
pub async fn scrub_pending(
    rc: &RunContext<'_>,
    lifecycle: &Lifecycle,
) -> Result<Option<ScrubReport>> {
    let started = chrono::Utc::now();
    let _commits = rc.store.lock_commits().await;
    let catalog = rc.store.catalog().await?;
    let mut report = ScrubReport::default();
    for (t, &floor) in &catalog.floors {
        let c = rc.store.compact_before(t, floor, started).await?;
        report.versions += c.versions;
        report.files += c.files;
    }
    if !catalog.tables.contains_key(OWNERS) {
        return Ok(None);
    }
    let ctx = engine::context_at(rc.as_of);
    rc.store.register_all(&ctx, &catalog).await?;
    let owners = committed(&ctx, &catalog, OWNERS, &owners_schema()).await?;
    let pending = materialize(
        &ctx,
        owners
            .clone()
            .filter(col("status").eq(lit(4i64)))?
            .select(vec![col("owner_key").alias("_owner")])?,
    )
    .await?;
    report.owners = pending.clone().count().await? as u64;
    if report.owners == 0 {
        return Ok((report.versions > 0).then_some(report));
    }
    let entity = rc
        .pipeline
        .entity(&lifecycle.owner)
        .expect("invariant: validated");

    // Identifiers: the owner's key and its accounts' keys.
    let mut ids = vec![
        pending
            .clone()
            .select(vec![col("_owner").alias("_id"), col("_owner")])?,
    ];
    for t in ["correlations", "identity_states"] {
        if catalog.tables.contains_key(t) {
            ids.push(
                ctx.table(t)
                    .await?
                    .join(
                        pending.clone(),
                        JoinType::Inner,
                        &["owner_key"],
                        &["_owner"],
                        None,
                    )?
                    .select(vec![
                        cast(col("account_key"), DataType::Utf8).alias("_id"),
                        col("_owner"),
                    ])?,
            );
        }
    }
    let ids = union_all(ids)?
        .expect("at least the owners")
        .filter(col("_id").is_not_null())?
        .aggregate(
            vec![col("_id")],
            vec![datafusion::functions_aggregate::expr_fn::min(col("_owner")).alias("_owner")],
        )?;
    let ids = materialize(&ctx, ids).await?;

    // Needles: every value the owner's personal columns ever had, with its replacement.
    let mut values = Vec::new();
    for t in [
        entity.name.clone(),
        format!("{}__history", entity.name),
        format!("{}__staging", entity.name),
    ] {
        if !catalog.tables.contains_key(&t) {
            continue;
        }
        let df = ctx.table(t.as_str()).await?;
        let schema = df.schema().clone();
        let df = df.join_on(
            pending.clone(),
            JoinType::Inner,
            vec![cast(quoted(&entity.key), DataType::Utf8).eq(col("_owner"))],
        )?;
        for (c, e) in &lifecycle.anonymize {
            if !schema.has_column_with_unqualified_name(c) {
                continue;
            }
            let repl = ctx.parse_sql_expr(&e.text, &schema)?;
            values.push(df.clone().select(vec![
                col("_owner"),
                cast(quoted(c), DataType::Utf8).alias("needle"),
                cast(repl, DataType::Utf8).alias("repl"),
            ])?);
        }
        if let Some(derived) = derived_values(&ctx, df, &schema, entity, lifecycle)? {
            values.push(derived);
        }
    }
    let Some(values) = union_all(values)? else {
        return Ok(Some(report));
    };
    view(
        &ctx,
        "sc_values",
        values.filter(
            col("needle").is_not_null().and(
                datafusion::functions::unicode::expr_fn::character_length(col("needle"))
                    .gt_eq(lit(2i64)),
            ),
        )?,
    )?;
    let needles = materialize(
        &ctx,
        ctx.sql(
            "SELECT _owner AS _nowner,
                    array_agg(needle ORDER BY needle) AS _needles,
                    array_agg(repl ORDER BY needle) AS _repl
             FROM (SELECT _owner, needle, min(repl) AS repl FROM sc_values
                   WHERE needle IS DISTINCT FROM repl GROUP BY _owner, needle)
             GROUP BY _owner",
        )
        .await?,
    )
    .await?;
    let all_needles = materialize(
        &ctx,
        ctx.sql(
            "SELECT array_agg(needle ORDER BY needle) AS _needles,
                    array_agg(repl ORDER BY needle) AS _repl
             FROM (SELECT needle, min(repl) AS repl FROM sc_values
                   WHERE needle IS DISTINCT FROM repl GROUP BY needle)",
        )
        .await?,
    )
    .await?;
    let scrub = Scrub {
        ctx: &ctx,
        ids,
        needles,
        all_needles,
        entity,
        lifecycle,
    };

    // Status 5 for the owners and their accounts.
    let mut change = CatalogChange {
        run_id: rc.run_id.clone(),
        what: "task:update_identities:anonymize".into(),
        ..Default::default()
    };
    let mut new_tables: Vec<(String, SchemaRef, Vec<RecordBatch>)> = Vec::new();
    let done = owners
        .join(
            pending.clone(),
            JoinType::Left,
            &["owner_key"],
            &["_owner"],
            None,
        )?
        .select(vec![
            col("owner_key"),
            when(col("_owner").is_not_null(), lit(5i64))
                .otherwise(col("status"))?
                .alias("status"),
            col("run_id"),
            when(col("_owner").is_not_null(), lit(rc.run_id.as_str()))
                .otherwise(col("scrubbed_run_id"))?
                .alias("scrubbed_run_id"),
        ])?
        .sort(vec![col("owner_key").sort(true, true)])?;
    let (s, b) = collect(done).await?;
    new_tables.push((OWNERS.into(), s, b));
    if catalog.tables.contains_key("identity_states") {
        let states = ctx.table("identity_states").await?;
        let names: Vec<String> = states
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let states = states
            .join(
                pending.clone(),
                JoinType::Left,
                &["owner_key"],
                &["_owner"],
                None,
            )?
            .select(
                names
                    .iter()
                    .map(|n| {
                        if n == "anonymization_status" {
                            when(
                                col("_owner").is_not_null().and(col(n).eq(lit(4i64))),
                                lit(5i64),
                            )
                            .otherwise(col(n))
                            .map(|e| e.alias(n))
                        } else {
                            Ok(quoted(n))
                        }
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()?,
            )?
            .sort(vec![
                col("resource_type").sort(true, true),
                col("account_key").sort(true, true),
            ])?;
        let (s, b) = collect(states).await?;
        new_tables.push(("identity_states".into(), s, b));
    }

    // Every table whose files hold a personal value gets a scrubbed version and loses the
    // older ones.
    for name in catalog.tables.keys() {
        if name == OWNERS {
            continue;
        }
        let in_files = scrub.hits_in_files(rc, name).await?;
        if in_files == 0 {
            continue;
        }
        report.tables += 1;
        let current = match new_tables.iter().position(|(n, _, _)| n == name) {
            Some(i) => {
                let (_, s, b) = new_tables.remove(i);
                frame(&ctx, &s, &b)?
            }
            None => ctx.table(name.as_str()).await?,
        };
        let names: Vec<Expr> = current
            .schema()
            .fields()
            .iter()
            .map(|f| quoted(f.name()))
            .collect();
        let Some(scrubbed) = scrub.apply(name, current)? else {
            continue;
        };
        let scrubbed = materialize(&ctx, scrubbed).await?;
        report.rows += scrubbed.clone().filter(col("_sc_changed"))?.count().await? as u64;
        // NULL and empty values are not correlation keys (SPEC 11.3): a key scrubbed to
        // nothing goes, as a recomputation from the scrubbed tables would not store it.
        let scrubbed = if name == super::correlation_keys::TABLE {
            scrubbed.filter(col("value").is_not_null().and(col("value").not_eq(lit(""))))?
        } else {
            scrubbed
        };
        let (s, b) = collect(scrubbed.select(names)?).await?;
        let v = rc
            .store
            .write_table(&catalog, name, s, b, WriteMode::Overwrite, &rc.run_id)
            .await?;
        change.tables.insert(name.clone(), v);
        change.floors.insert(name.clone(), v);
    }
    for (name, s, b) in new_tables {
        let v = rc
            .store
            .write_table(&catalog, &name, s, b, WriteMode::Overwrite, &rc.run_id)
            .await?;
        change.tables.insert(name, v);
    }
    report.order_files = scrub.order_files(rc).await?;
    let floors = change.floors.clone();
    super::failpoint("anonymize.before_commit");
    rc.store.commit(&catalog, change).await?;
    super::failpoint("anonymize.after_commit");
    for (t, floor) in floors {
        let c = rc.store.compact_before(&t, floor, started).await?;
        report.versions += c.versions;
        report.files += c.files;
    }
    Ok(Some(report))
}

/// The tasks' run records: only their `message` is free text (a task name may hold a word that
/// is also a short personal value).
const TASK_RUNS: &str = "task_runs";

struct Scrub<'a> {
    ctx: &'a SessionContext,
    /// `(_id, _owner)`: keys that make a row the owner's.
    ids: DataFrame,
    /// `(_nowner, _needles, _repl)` per owner.
    needles: DataFrame,
    /// One row `(_needles, _repl)`: every pending owner's values.
    all_needles: DataFrame,
    entity: &'a Entity,
    lifecycle: &'a Lifecycle,
}

impl Scrub<'_> {
    fn is_owner_table(&self, name: &str) -> bool {
        name == self.entity.name
            || name == format!("{}__history", self.entity.name)
            || name == format!("{}__staging", self.entity.name)
    }

    /// `df` with its text columns scrubbed on the owners' rows, plus `_sc_changed`; `None`
    /// when the table has no text column.
    fn apply(&self, name: &str, df: DataFrame) -> Result<Option<DataFrame>> {
        let schema = df.schema().clone();
        let texts: Vec<String> = schema
            .fields()
            .iter()
            .filter(|f| crate::engine::is_text(f.data_type()))
            .map(|f| f.name().clone())
            .collect();
        if texts.is_empty() {
            return Ok(None);
        }
        // Free text that names no owner in a column of its own: the raw lines of rejected rows,
        // and the tasks' messages (a warning's example value) lose every pending owner's values.
        let everyone = name == "rejected_rows" || name == TASK_RUNS;
        let j = if everyone {
            df.join_on(self.all_needles.clone(), JoinType::Left, vec![lit(true)])?
                .with_column("_sc_owner", lit("rejected"))?
        } else {
            let mut j = df;
            let mut owners = Vec::new();
            for (i, c) in texts.iter().enumerate() {
                let (id, owner) = (format!("_sc_id{i}"), format!("_sc_o{i}"));
                j = j.join_on(
                    self.ids
                        .clone()
                        .select(vec![col("_id").alias(&id), col("_owner").alias(&owner)])?,
                    JoinType::Left,
                    vec![cast(quoted(c), DataType::Utf8).eq(col(&id))],
                )?;
                owners.push(col(owner));
            }
            j.with_column(
                "_sc_owner",
                datafusion::functions::core::expr_fn::coalesce(owners),
            )?
            .join_on(
                self.needles.clone(),
                JoinType::Left,
                vec![col("_sc_owner").eq(col("_nowner"))],
            )?
        };
        let owner_table = self.is_owner_table(name);
        let scrub = engine::scrub_udf();
        // The orders' attributes are JSON documents: a value anonymized to NULL becomes null.
        let scrub_json = engine::scrub_json_udf();
        let mut out = Vec::new();
        let mut diffs = Vec::new();
        for f in schema.fields() {
            let n = f.name();
            let anonymize = self
                .lifecycle
                .anonymize
                .iter()
                .find(|(c, _)| owner_table && c == n);
            let (new, old) = if let Some((_, e)) = anonymize {
                let ty = declared_type(self.entity, n, f.data_type());
                let value = try_cast(self.ctx.parse_sql_expr(&e.text, &schema)?, ty.clone());
                let old = cast(quoted(n), ty);
                (
                    when(col("_sc_owner").is_not_null(), value).otherwise(old.clone())?,
                    old,
                )
            } else if crate::engine::is_text(f.data_type()) && (name != TASK_RUNS || n == "message")
            {
                let old = cast(quoted(n), DataType::Utf8);
                (
                    when(
                        col("_needles").is_not_null(),
                        match name == super::orders::TABLE && n == "attributes" {
                            true => &scrub_json,
                            false => &scrub,
                        }
                        .call(vec![
                            quoted(n),
                            col("_needles"),
                            col("_repl"),
                        ]),
                    )
                    .otherwise(old.clone())?,
                    old,
                )
            } else {
                out.push(quoted(n));
                continue;
            };
            diffs.push(datafusion::logical_expr::binary_expr(
                new.clone(),
                datafusion::logical_expr::Operator::IsDistinctFrom,
                old,
            ));
            out.push(new.alias(n));
        }
        let changed = diffs
            .into_iter()
            .reduce(Expr::or)
            .unwrap_or(lit(false))
            .and(col("_sc_owner").is_not_null());
        let scrubbed = j.select(
            out.into_iter()
                .chain([changed.alias("_sc_changed")])
                .collect::<Vec<_>>(),
        )?;
        Ok(Some(self.recomputed(name, scrubbed)?))
    }

    /// The owner table and its history with the computed columns of every scrubbed row
    /// computed again from its anonymized columns, as a synchronization computes them for the
    /// anonymized incoming rows (a login made of the first name's initial and the last name
    /// becomes the anonymized one's, not the initial plus the scrubbed name). Other tables as
    /// they are.
    fn recomputed(&self, name: &str, df: DataFrame) -> Result<DataFrame> {
        let e = self.entity;
        let has_all = e
            .computed
            .iter()
            .all(|c| df.schema().has_column_with_unqualified_name(&c.name));
        let history = format!("{}__history", e.name);
        if e.computed.is_empty() || !has_all || (name != e.name && name != history) {
            return Ok(df);
        }
        let names: Vec<Expr> = df
            .schema()
            .fields()
            .iter()
            .map(|f| quoted(f.name()))
            .collect();
        let mut df = df;
        for (i, c) in e.computed.iter().enumerate() {
            df = df.with_column(&format!("_sc_was{i}"), quoted(&c.name))?;
        }
        let mut df = crate::engine::expr::apply_computed(self.ctx, df, e)?;
        for (i, c) in e.computed.iter().enumerate() {
            let ty = df
                .schema()
                .field_with_unqualified_name(&format!("_sc_was{i}"))?
                .data_type()
                .clone();
            df = df.with_column(
                &c.name,
                when(col("_sc_changed"), try_cast(quoted(&c.name), ty))
                    .otherwise(col(format!("_sc_was{i}")))?,
            )?;
        }
        Ok(df.select(names)?)
    }

    /// Rows of the owners holding a personal value in any data file of table `name` (every
    /// retained version). A file set DataFusion cannot read as one table counts as a hit.
    async fn hits_in_files(&self, rc: &RunContext<'_>, name: &str) -> Result<u64> {
        let files: Vec<String> = rc
            .store
            .list_files(name)
            .await?
            .into_iter()
            .filter(|f| f.ends_with(".parquet") && !f.contains("/_delta_log/"))
            .collect();
        if files.is_empty() {
            return Ok(0);
        }
        let current = self.ctx.table(name).await?;
        let schema = crate::store::stored_schema(&Arc::new(current.schema().as_arrow().clone()));
        let urls = files
            .iter()
            .map(|f| {
                ListingTableUrl::parse(
                    rc.store
                        .root()
                        .join(f)
                        .map_err(|e| Error::store(format!("{f}: {e}")))?
                        .as_str(),
                )
                .map_err(Error::from)
            })
            .collect::<Result<Vec<_>>>()?;
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(
                ListingOptions::new(Arc::new(ParquetFormat::default()))
                    .with_file_extension(".parquet"),
            )
            .with_schema(schema);
        let all = ListingTable::try_new(config).and_then(|t| self.ctx.read_table(Arc::new(t)));
        let Ok(all) = all else { return Ok(1) };
        let Some(scrubbed) = self.apply(name, all)? else {
            return Ok(0);
        };
        // A hit: an owner's row whose scrubbed values differ from the stored ones.
        let hits = async { Ok::<_, Error>(scrubbed.filter(col("_sc_changed"))?.count().await?) };
        Ok(hits.await.map(|n| n as u64).unwrap_or(1))
    }

    /// Rewrites the order files that hold a pending owner's values: the owner's orders (by
    /// owner key or account key) lose them in the JSON document, and the Parquet file is
    /// written again from the scrubbed orders.
    async fn order_files(&self, rc: &RunContext<'_>) -> Result<u64> {
        let mut ids: HashMap<String, String> = HashMap::new();
        for b in self.ids.clone().collect().await? {
            let (k, o) = (text_column(&b, 0)?, text_column(&b, 1)?);
            for i in 0..b.num_rows() {
                if let (Some(k), Some(o)) = (&k[i], &o[i]) {
                    ids.insert(k.clone(), o.clone());
                }
            }
        }
        let mut needles: HashMap<String, Vec<(String, String)>> = HashMap::new();
        // Per owner, the needles whose replacement is NULL: an order value that is one of them
        // alone becomes null, as a table cell does (SPEC 9); inside longer text it is removed.
        let mut nulls: HashMap<String, Vec<String>> = HashMap::new();
        for b in self.needles.clone().collect().await? {
            let owners = text_column(&b, 0)?;
            let (n, r) = (b.column(1).as_list::<i32>(), b.column(2).as_list::<i32>());
            for (i, owner) in owners.iter().enumerate() {
                let Some(owner) = owner else { continue };
                if n.is_null(i) {
                    continue;
                }
                let (nv, rv) = (n.value(i), r.value(i));
                let nv = datafusion::arrow::compute::cast(&nv, &DataType::Utf8)?;
                let rv = datafusion::arrow::compute::cast(&rv, &DataType::Utf8)?;
                let (nv, rv) = (nv.as_string::<i32>(), rv.as_string::<i32>());
                nulls.insert(
                    owner.clone(),
                    (0..nv.len())
                        .filter(|&j| nv.is_valid(j) && !rv.is_valid(j))
                        .map(|j| nv.value(j).to_string())
                        .collect(),
                );
                needles.insert(
                    owner.clone(),
                    (0..nv.len())
                        .filter(|&j| nv.is_valid(j))
                        .map(|j| {
                            let r = if rv.is_valid(j) { rv.value(j) } else { "" };
                            (nv.value(j).to_string(), r.to_string())
                        })
                        .collect(),
                );
            }
        }
        let every: Vec<(String, String)> = needles.values().flatten().cloned().collect();
        if every.is_empty() {
            return Ok(0);
        }
        let mut rewritten = 0;
        for file in OrderFiles::of(rc).json_files(rc).await? {
            let bytes = file.read(rc).await?;
            if !engine::contains_needle(&bytes, &every) {
                continue;
            }
            let mut doc: super::orders::OrdersFileOwned = serde_json::from_slice(&bytes)
                .map_err(|e| Error::store(format!("order file {}: {e}", file.name())))?;
            for o in &mut doc.orders {
                let owner = o
                    .owner
                    .as_ref()
                    .map(|w| w.key.clone())
                    .filter(|k| needles.contains_key(k))
                    .or_else(|| o.resource_key.as_ref().and_then(|k| ids.get(k).cloned()));
                if let Some(k) = owner
                    && let Some(n) = needles.get(&k)
                {
                    scrub_order(o, n, nulls.get(&k).map_or(&[], Vec::as_slice));
                }
            }
            let json = serde_json::to_vec_pretty(&doc).map_err(|e| Error::store(e.to_string()))?;
            let orders: Vec<&super::orders::Order> = doc.orders.iter().collect();
            let parquet = super::orders::parquet_of(&doc.run_id, &doc.connector, &orders)?;
            file.write(rc, "json", json).await?;
            file.write(rc, "parquet", parquet).await?;
            rewritten += 1;
        }
        Ok(rewritten)
    }
}

/// The values of the computed columns made from personal ones (a login `rales` from Renée
/// Ales: under six characters, the name alone matches only whole words), each with the value
/// the column takes on the anonymized row — `(_owner, needle, repl)` — or `None` when no
/// computed column reads a personal one. `df` holds the owner rows of a table with the
/// entity's columns (`schema`).
fn derived_values(
    ctx: &SessionContext,
    df: DataFrame,
    schema: &datafusion::common::DFSchema,
    entity: &Entity,
    lifecycle: &Lifecycle,
) -> Result<Option<DataFrame>> {
    // Personal: the anonymize columns, then every computed column reading a personal one.
    let mut personal: Vec<String> = lifecycle.anonymize.iter().map(|(c, _)| c.clone()).collect();
    let mut derived = Vec::new();
    for c in &entity.computed {
        if !schema.has_column_with_unqualified_name(&c.name) {
            return Ok(None);
        }
        let reads = ctx
            .parse_sql_expr(&c.expr, schema)?
            .column_refs()
            .iter()
            .any(|r| personal.contains(&r.name));
        if reads {
            personal.push(c.name.clone());
            derived.push(c.name.clone());
        }
    }
    if derived.is_empty() {
        return Ok(None);
    }
    // The stored values kept aside, then the row anonymized and its computed columns computed
    // again, in their order (each may read the ones before).
    let mut anon = df;
    for c in &derived {
        anon = anon.with_column(&format!("_was_{c}"), quoted(c))?;
    }
    let replacements: Vec<(String, Expr)> = lifecycle
        .anonymize
        .iter()
        .filter(|(c, _)| schema.has_column_with_unqualified_name(c))
        .map(|(c, e)| Ok((c.clone(), ctx.parse_sql_expr(&e.text, schema)?)))
        .collect::<Result<_>>()?;
    for (c, e) in replacements {
        anon = anon.with_column(
            &c,
            cast(
                e,
                schema.field_with_unqualified_name(&c)?.data_type().clone(),
            ),
        )?;
    }
    for c in &entity.computed {
        let e = ctx.parse_sql_expr(&c.expr, anon.schema())?;
        anon = anon.with_column(&c.name, e)?;
    }
    let parts = derived
        .iter()
        .map(|c| {
            Ok(anon.clone().select(vec![
                col("_owner"),
                cast(quoted(&format!("_was_{c}")), DataType::Utf8).alias("needle"),
                cast(quoted(c), DataType::Utf8).alias("repl"),
            ])?)
        })
        .collect::<Result<Vec<_>>>()?;
    union_all(parts)
}

fn text_column(b: &RecordBatch, i: usize) -> Result<Vec<Option<String>>> {
    let a = datafusion::arrow::compute::cast(b.column(i), &DataType::Utf8)?;
    let a = a.as_string::<i32>();
    Ok((0..a.len())
        .map(|j| a.is_valid(j).then(|| a.value(j).to_string()))
        .collect())
}

/// Scrubs one order of an owner's values: each needle is replaced in text, and an attribute
/// value that is one of `nulls` (needles whose replacement is NULL) alone becomes null.
fn scrub_order(o: &mut super::orders::Order, needles: &[(String, String)], nulls: &[String]) {
    let s = |t: &str| engine::replace_needles(t, needles);
    o.resource_key = o.resource_key.as_deref().map(s);
    for c in o.attributes.values_mut() {
        for v in [&mut c.old, &mut c.new] {
            if let serde_json::Value::String(t) = v {
                *v = match nulls.iter().any(|n| engine::is_whole_needle(t, n)) {
                    true => serde_json::Value::Null,
                    false => serde_json::Value::String(s(t)),
                };
            }
        }
    }
    for l in o.links.values_mut() {
        for v in l.add.iter_mut().chain(l.remove.iter_mut()) {
            *v = s(v);
        }
    }
}

/// Where the order files are: `_orders` in the store or `[output] orders` on disk.
enum OrderFiles {
    Store,
    Dir(std::path::PathBuf),
}

/// One `<run_id>/<connector>.json` order file (its `.parquet` sits beside it).
enum OrderFile {
    Store(String),
    Dir(std::path::PathBuf),
}

impl OrderFiles {
    fn of(rc: &RunContext<'_>) -> Self {
        match &rc.pipeline.orders_dir {
            Some(d) => Self::Dir(rc.pipeline.dir.join(d)),
            None => Self::Store,
        }
    }

    async fn json_files(&self, rc: &RunContext<'_>) -> Result<Vec<OrderFile>> {
        Ok(match self {
            Self::Store => rc
                .store
                .list_files("_orders")
                .await?
                .into_iter()
                .filter(|f| f.ends_with(".json"))
                .map(OrderFile::Store)
                .collect(),
            Self::Dir(dir) => {
                let mut out = Vec::new();
                let Ok(runs) = std::fs::read_dir(dir) else {
                    return Ok(out);
                };
                for run in runs.flatten() {
                    let Ok(files) = std::fs::read_dir(run.path()) else {
                        continue;
                    };
                    for f in files.flatten() {
                        if f.path().extension().is_some_and(|e| e == "json") {
                            out.push(OrderFile::Dir(f.path()));
                        }
                    }
                }
                out
            }
        })
    }
}

impl OrderFile {
    fn name(&self) -> String {
        match self {
            Self::Store(r) => r.clone(),
            Self::Dir(p) => p.display().to_string(),
        }
    }

    async fn read(&self, rc: &RunContext<'_>) -> Result<Vec<u8>> {
        match self {
            Self::Store(r) => Ok(rc.store.read_file(r).await?.unwrap_or_default()),
            Self::Dir(p) => std::fs::read(p).map_err(|source| Error::Io {
                context: format!("reading {}", p.display()),
                source,
            }),
        }
    }

    /// Replaces this file (`ext` = json) or its sibling (`ext` = parquet) in one step.
    async fn write(&self, rc: &RunContext<'_>, ext: &str, bytes: Vec<u8>) -> Result<()> {
        match self {
            Self::Store(r) => {
                let rel = format!("{}.{ext}", r.trim_end_matches(".json"));
                rc.store.put_file(&rel, bytes).await
            }
            Self::Dir(p) => {
                let path = p.with_extension(ext);
                let tmp = p.with_extension(format!("{ext}.tmp"));
                std::fs::write(&tmp, &bytes)
                    .and_then(|_| std::fs::rename(&tmp, &path))
                    .map_err(|source| Error::Io {
                        context: format!("writing {}", path.display()),
                        source,
                    })
            }
        }
    }
}
