//! DataFrame helpers the tasks share: committed tables, collected batches, quoted columns.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::{
    SlicesIterator, filter_record_batch, kernels::boolean::not, prep_null_mask_filter,
};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::ScalarValue;
use datafusion::prelude::*;

use crate::engine;
use crate::error::Result;
use crate::store::Catalog;

/// A column by its exact name (configuration names may need quoting in SQL).
pub fn quoted(name: &str) -> Expr {
    col(format!("\"{name}\""))
}

/// The committed table `name` (registered in `ctx`) as a DataFrame with exactly `schema`'s
/// columns (cast by name; columns added to the configuration since are NULL), or an empty one.
pub async fn committed(
    ctx: &SessionContext,
    catalog: &Catalog,
    name: &str,
    schema: &SchemaRef,
) -> Result<DataFrame> {
    if !catalog.tables.contains_key(name) {
        return Ok(ctx.read_batch(RecordBatch::new_empty(schema.clone()))?);
    }
    conform(ctx.table(name).await?, schema)
}

/// `df` with the columns of `schema`, in its order and types: a column of another type is
/// converted where its values allow and NULL elsewhere (a column retyped in `pipeline.toml`:
/// a computed column's old values are recomputed anyway), a missing one is NULL.
pub fn conform(df: DataFrame, schema: &SchemaRef) -> Result<DataFrame> {
    let have = df.schema().clone();
    let exprs: Vec<Expr> = schema
        .fields()
        .iter()
        .map(|f| {
            let to = f.data_type().clone();
            match have.field_with_unqualified_name(f.name()) {
                Ok(h) if *h.data_type() == to => quoted(f.name()).alias(f.name()),
                Ok(_) => try_cast(quoted(f.name()), to).alias(f.name()),
                Err(_) => cast(lit(ScalarValue::Null), to).alias(f.name()),
            }
        })
        .collect();
    Ok(df.select(exprs)?)
}

/// A frame over collected batches that keeps its schema when there are none. Batches whose
/// string columns are dictionary-encoded ([`engine::sorted_distinct`]'s) are decoded to
/// `schema` as they are scanned, a batch at a time.
pub fn frame(
    ctx: &SessionContext,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<DataFrame> {
    let stored = batches.first().map(RecordBatch::schema);
    match stored {
        Some(stored) if engine::decoded_schema(&stored) != stored => {
            let df = ctx.read_table(engine::mem_table(stored, batches.to_vec())?)?;
            let columns: Vec<Expr> = schema
                .fields()
                .iter()
                .map(|f| cast(quoted(f.name()), f.data_type().clone()).alias(f.name()))
                .collect();
            Ok(df.select(columns)?)
        }
        _ => Ok(ctx.read_table(engine::mem_table(schema.clone(), batches.to_vec())?)?),
    }
}

/// Runs a DataFrame and returns its schema with the batches (the schema survives no rows).
pub async fn collect(df: DataFrame) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let schema = std::sync::Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await?;
    Ok((schema, batches))
}

/// The marker column of the rows a [`Replacement`] replaces.
const REPLACED: &str = "_replaced";

/// A table's next content: name, schema, batches.
pub struct NewTable {
    pub name: String,
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    /// What is already known of the content against the committed table.
    pub known: Known,
    /// A dirty replacement committed as deletion vectors: `batches` are then only the
    /// recomputed rows, added to the committed ones the patch keeps.
    pub patch: Option<Box<crate::store::Patch>>,
}

/// What a task already knows of a new table's content against the committed table, so that
/// the commit does not compare them again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Known {
    /// Compare before writing.
    #[default]
    Unknown,
    /// Differs: write it.
    Changed,
    /// Equal to the committed table, which has `rows` rows; the batches are empty.
    Unchanged { rows: u64 },
    /// Rows to add to the committed table (`recently_modified`): appended, not compared.
    Added,
}

/// A dirty task's new content for a table: the committed rows, which of them the task
/// recomputed, and the recomputed rows that replace those.
pub struct Replacement {
    /// The committed table, as stored: in the order the task sorts it by.
    pub old: DataFrame,
    /// The keys of the replaced rows: a committed row is replaced when its columns `on` equal
    /// one of these rows (column by column).
    pub keys: DataFrame,
    /// The key columns of `old`.
    pub on: Vec<&'static str>,
    /// The recomputed rows.
    pub new: DataFrame,
    /// Whether the task found the recomputed rows to differ from the replaced ones: the
    /// table is then written without reading those back to compare.
    pub differs: bool,
}

impl NewTable {
    pub fn new(name: &str, (schema, batches): (SchemaRef, Vec<RecordBatch>)) -> Self {
        Self {
            name: name.to_string(),
            schema,
            batches,
            known: Known::Unknown,
            patch: None,
        }
    }

    /// The committed table `name` with the replacement's rows, in `order`, the order the table
    /// is stored in. The committed rows are read once, in their stored order; only the
    /// recomputed rows are sorted (each distinct row once with `distinct`: `order` then names
    /// every column, as [`engine::sorted_distinct`] sorts) and placed between the kept ones
    /// ([`engine::splice`]). When the recomputed rows equal the replaced ones (as multisets),
    /// the table is unchanged. Should the stored rows not be in `order` (a table written by
    /// another tool), all rows are sorted instead.
    ///
    /// With `[store] deletion_vectors`, on a real run of a committed table, the replaced rows
    /// are found and read by position and the table is committed as a patch ([`crate::store::Patch`]: deletion vectors and the
    /// recomputed rows) instead of whole.
    pub async fn replaced(
        rc: &super::RunContext<'_>,
        read: &Catalog,
        ctx: &SessionContext,
        name: &str,
        r: Replacement,
        order: &[&str],
        distinct: bool,
    ) -> Result<Self> {
        let sort = || order.iter().map(|c| quoted(c).sort(true, true)).collect();
        let started = std::time::Instant::now();
        let differs = r.differs;
        let (schema, new) = if distinct {
            // Decoded: the kept rows, read from the store, are plain text.
            let (encoded, new) = engine::sorted_distinct(ctx, r.new).await?;
            let schema = engine::decoded_schema(&encoded);
            let new = new
                .iter()
                .map(|b| engine::cast_batch(b, &schema))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            (schema, new)
        } else {
            collect(r.new.sort(sort())?).await?
        };
        let rows = |v: &[RecordBatch]| v.iter().map(RecordBatch::num_rows).sum::<usize>();
        let version = read.tables.get(name).copied();
        let patching = rc.pipeline.deletion_vectors && !rc.dry_run;
        let computed = started.elapsed().as_secs_f64();
        if let Some(version) = version.filter(|v| *v != u64::MAX && patching) {
            let found = rc
                .store
                .find_replaced(name, version, r.keys.clone(), &r.on, &schema)
                .await?;
            tracing::debug!(
                table = name,
                computed = format!("{computed:.3}"),
                found = format!("{:.3}", started.elapsed().as_secs_f64() - computed),
                "replaced rows"
            );
            if let Some(patch) = found {
                // The replaced rows are read only to find the table unchanged, which takes as
                // many recomputed rows as replaced ones.
                let unchanged = !differs && patch.removed_rows() == rows(&new) as u64 && {
                    let removed = rc.store.replaced_rows(name, &patch, &schema).await?;
                    same_rows(ctx, &schema, &removed, &new).await?
                };
                if unchanged {
                    let rows = patch.rows_after(0);
                    return Ok(Self {
                        known: Known::Unchanged { rows },
                        ..Self::new(name, (schema, Vec::new()))
                    });
                }
                return Ok(Self {
                    known: Known::Changed,
                    patch: Some(Box::new(patch)),
                    ..Self::new(name, (schema, new))
                });
            }
        }
        // Each committed row with whether it is replaced (a join with the keys).
        let marked = replaced_by_join(r.old, r.keys, &r.on)?;
        let (_, stored) = engine::collect_in_order(ctx, marked).await?;
        let (mut kept, mut removed) = (Vec::new(), Vec::new());
        for b in stored {
            let i = b.schema().index_of(REPLACED)?;
            let mask = datafusion::arrow::array::as_boolean_array(b.column(i)).clone();
            // A NULL mark is not a replaced row.
            let mask = match datafusion::arrow::array::Array::null_count(&mask) {
                0 => mask,
                _ => prep_null_mask_filter(&mask),
            };
            let mut b = b;
            b.remove_column(i);
            removed.push(filter_record_batch(&b, &mask)?);
            // The kept rows as zero-copy slices of the batch: few rows are replaced, and
            // copying the others would cost as much as the read.
            let keep = not(&mask)?;
            for (start, end) in SlicesIterator::new(&keep) {
                kept.push(b.slice(start, end - start));
            }
        }
        if !differs && same_rows(ctx, &schema, &removed, &new).await? {
            let rows = (rows(&kept) + rows(&new)) as u64;
            return Ok(Self {
                known: Known::Unchanged { rows },
                ..Self::new(name, (schema, Vec::new()))
            });
        }
        // The kept and the recomputed rows are disjoint (they belong to different owners), so
        // there are no repeats across them.
        let batches = match engine::splice(&schema, &kept, &new, order)? {
            Some(spliced) => spliced,
            None => {
                kept.extend(new);
                let all = frame(ctx, &schema, &kept)?;
                if distinct {
                    engine::sorted_distinct(ctx, all).await?.1
                } else {
                    all.sort(sort())?.collect().await?
                }
            }
        };
        Ok(Self {
            known: Known::Changed,
            ..Self::new(name, (schema, batches))
        })
    }

    /// The frame's rows in the order its plan yields them ([`engine::collect_in_order`]).
    pub async fn in_order(ctx: &SessionContext, name: &str, df: DataFrame) -> Result<Self> {
        Ok(Self::new(name, engine::collect_in_order(ctx, df).await?))
    }

    pub async fn from_frame(name: &str, df: DataFrame) -> Result<Self> {
        Ok(Self::new(name, collect(df).await?))
    }

    /// The frame's distinct rows, sorted by all columns in schema order (ascending, NULLs
    /// first): `engine::sorted_distinct`.
    pub async fn sorted_distinct(ctx: &SessionContext, name: &str, df: DataFrame) -> Result<Self> {
        let (encoded, batches) = engine::sorted_distinct(ctx, df).await?;
        Ok(Self::new(name, (engine::decoded_schema(&encoded), batches)))
    }

    pub fn rows(&self) -> u64 {
        match self.known {
            Known::Unchanged { rows } => rows,
            _ => {
                let rows = self.batches.iter().map(|b| b.num_rows() as u64).sum();
                match &self.patch {
                    Some(p) => p.rows_after(rows),
                    None => rows,
                }
            }
        }
    }
}

/// Whether the recomputed rows are the ones they replace: as many, and none that is not among
/// them.
async fn same_rows(
    ctx: &SessionContext,
    schema: &SchemaRef,
    removed: &[RecordBatch],
    new: &[RecordBatch],
) -> Result<bool> {
    let rows = |v: &[RecordBatch]| v.iter().map(RecordBatch::num_rows).sum::<usize>();
    if rows(removed) != rows(new) {
        return Ok(false);
    }
    let removed = frame(ctx, schema, removed)?;
    Ok(frame(ctx, schema, new)?.except(removed)?.count().await? == 0)
}

/// Each committed row with whether it is replaced (`_replaced`), by a join with the keys. The
/// keys are the hash table (there are few), and a hash join keeps the order of the rows it
/// probes.
fn replaced_by_join(old: DataFrame, keys: DataFrame, on: &[&str]) -> Result<DataFrame> {
    let columns: Vec<Expr> = old
        .schema()
        .fields()
        .iter()
        .map(|f| quoted(f.name()))
        .chain([col("mark").alias(REPLACED)])
        .collect();
    let left: Vec<String> = (0..on.len()).map(|i| format!("_replaced_key{i}")).collect();
    let keys = keys.clone().select(
        keys.schema()
            .fields()
            .iter()
            .zip(&left)
            .map(|(f, name)| quoted(f.name()).alias(name))
            .collect::<Vec<_>>(),
    )?;
    let left: Vec<&str> = left.iter().map(String::as_str).collect();
    Ok(keys
        .join(old, JoinType::RightMark, &left, on, None)?
        .select(columns)?)
}

/// [`commit_tables_counted`], returning the rows written only.
pub async fn commit_tables(
    rc: &super::RunContext<'_>,
    read: &Catalog,
    what: &str,
    tables: Vec<NewTable>,
) -> Result<u64> {
    Ok(commit_tables_counted(rc, read, what, tables).await?.rows)
}

/// What a commit wrote.
#[derive(Clone, Debug, Default)]
pub struct Committed {
    /// Rows written.
    pub rows: u64,
    /// Tables given a new version (a table emptied is one, with no row written).
    pub tables: usize,
    /// Their names.
    pub names: Vec<String>,
}

/// Overwrites each table whose content changed and commits them together in one catalog
/// version (nothing on a dry run). Returns what it wrote: no table when nothing changed.
///
/// `read` is the catalog the task computed from. A table it replaces must still be at the
/// version it read: when another process (another job on the same store) committed it
/// meanwhile, replacing it would lose that commit, so the task fails with
/// [`Error::Conflict`] and [`super::run_task`] runs it again on the new state. Appended
/// tables ([`Known::Added`]) do not conflict.
pub async fn commit_tables_counted(
    rc: &super::RunContext<'_>,
    read: &Catalog,
    what: &str,
    tables: Vec<NewTable>,
) -> Result<Committed> {
    if rc.dry_run {
        // An unchanged table stays as committed; added rows are staged with the rows already
        // there (the staged table stands for the whole table).
        for t in tables {
            match t.known {
                Known::Unchanged { .. } => {}
                Known::Added => stage_appended(rc, t).await?,
                _ => rc.stage_dry_run(t),
            }
        }
        return Ok(Committed::default());
    }
    if tables.is_empty() {
        return Ok(Committed::default());
    }
    super::pausepoint(&format!("commit.{what}")).await;
    let _commits = rc.store.lock_commits().await;
    let latest = rc.store.catalog().await?;
    let catalog = &latest;
    let mut change = crate::store::CatalogChange {
        run_id: rc.run_id.clone(),
        what: what.to_string(),
        ..Default::default()
    };
    // The tables are checked and written concurrently (each write encodes on its own task);
    // none is visible before the catalog commit below.
    let writes = tables.into_iter().map(|t| async move {
        let same = match t.known {
            Known::Unchanged { .. } => true,
            Known::Changed => false,
            Known::Added => t.rows() == 0,
            Known::Unknown => unchanged(rc, catalog, &t).await?,
        };
        if same {
            return Ok(None);
        }
        if t.known != Known::Added && catalog.tables.get(&t.name) != read.tables.get(&t.name) {
            return Err(crate::error::Error::Conflict(format!(
                "store: table `{}` was committed by another run while this task computed it ({what}); nothing of this task is visible — re-run it",
                t.name
            )));
        }
        let rows = t.rows();
        let mode = match t.known {
            Known::Added => crate::store::WriteMode::Append,
            _ => crate::store::WriteMode::Overwrite,
        };
        let v = match &t.patch {
            Some(p) => {
                rc.store
                    .write_patch(catalog, &t.name, p, t.schema, t.batches, &rc.run_id)
                    .await?
            }
            None => {
                rc.store
                    .write_table(catalog, &t.name, t.schema, t.batches, mode, &rc.run_id)
                    .await?
            }
        };
        Ok::<_, crate::error::Error>(Some((t.name, v, rows)))
    });
    let mut written = 0;
    for (name, v, rows) in futures::future::try_join_all(writes)
        .await?
        .into_iter()
        .flatten()
    {
        written += rows;
        change.tables.insert(name, v);
    }
    if change.tables.is_empty() {
        return Ok(Committed::default());
    }
    let tables = change.tables.len();
    let names = change.tables.keys().cloned().collect();
    rc.store.commit(catalog, change).await?;
    Ok(Committed {
        rows: written,
        tables,
        names,
    })
}

/// Whether the committed table holds exactly these rows (as a multiset, columns by name).
async fn unchanged(rc: &super::RunContext<'_>, catalog: &Catalog, t: &NewTable) -> Result<bool> {
    if !catalog.tables.contains_key(&t.name) {
        return Ok(false);
    }
    let ctx = engine::context();
    if !rc.store.register(&ctx, catalog, &t.name).await? {
        return Ok(false);
    }
    let old = ctx.table(t.name.as_str()).await?;
    let same_columns = old.schema().fields().len() == t.schema.fields().len()
        && t.schema
            .fields()
            .iter()
            .all(|f| old.schema().has_column_with_unqualified_name(f.name()));
    if !same_columns || old.clone().count().await? as u64 != t.rows() {
        return Ok(false);
    }
    if same_in_order(&ctx, catalog, t).await? {
        return Ok(true);
    }
    // The same rows in another order are the same table.
    let old = committed(&ctx, catalog, &t.name, &t.schema).await?;
    let new = frame(&ctx, &t.schema, &t.batches)?;
    let new = new.select(
        t.schema
            .fields()
            .iter()
            .map(|f| quoted(f.name()))
            .collect::<Vec<_>>(),
    )?;
    Ok(new.except(old)?.count().await? == 0)
}

/// Whether the committed rows, read in stored order, are `t`'s rows in their order (as many
/// rows; checked before). A table recomputed from unchanged inputs comes out in the order it
/// is stored, each being written sorted on its key: compared row by row while the stored rows
/// stream, it needs none of the hash tables of a set comparison. At 1M identities, a complete
/// job on a store that already held its results spent 11 s in the role model's set
/// comparisons, which also raised its peak from 5.0 to 6.3 GB. False at the first row that
/// differs (or a column type the comparison does not handle): the caller then compares the
/// sets.
async fn same_in_order(ctx: &SessionContext, catalog: &Catalog, t: &NewTable) -> Result<bool> {
    use datafusion::arrow::compute::kernels::cmp::distinct;
    use futures::StreamExt;
    let old = committed(ctx, catalog, &t.name, &t.schema).await?;
    let mut old = engine::stream_in_order(ctx, old).await?;
    let mut new = t.batches.iter().filter(|b| b.num_rows() > 0);
    // The new batch being compared (as the table's types: sorted tables hold dictionaries),
    // and how many of its rows are compared already.
    let mut current: Option<RecordBatch> = None;
    let mut offset = 0;
    while let Some(batch) = old.next().await {
        let batch = batch?;
        let mut at = 0;
        while at < batch.num_rows() {
            if current.as_ref().is_none_or(|c| offset == c.num_rows()) {
                let Some(next) = new.next() else {
                    return Ok(false);
                };
                current = Some(engine::cast_batch(next, &t.schema)?);
                offset = 0;
            }
            let c = current.as_ref().expect("set above");
            let n = (batch.num_rows() - at).min(c.num_rows() - offset);
            for i in 0..t.schema.fields().len() {
                let stored = batch.column(i).slice(at, n);
                let computed = c.column(i).slice(offset, n);
                match distinct(&stored, &computed) {
                    Ok(differs) if differs.true_count() == 0 => {}
                    _ => return Ok(false),
                }
            }
            at += n;
            offset += n;
        }
    }
    Ok(current.is_none_or(|c| offset == c.num_rows()) && new.next().is_none())
}

/// A session at the run's as-of date with every committed table registered.
///
/// On a dry run, the tables that earlier tasks of the run would have committed replace the
/// committed ones (and appear in the returned catalog with version `u64::MAX`).
pub async fn session(rc: &super::RunContext<'_>) -> Result<(SessionContext, Catalog)> {
    let started = std::time::Instant::now();
    let mut catalog = rc.store.catalog().await?;
    let ctx = engine::context_at(rc.as_of);
    rc.store.register_all(&ctx, &catalog).await?;
    tracing::debug!(
        seconds = format!("{:.3}", started.elapsed().as_secs_f64()),
        "session"
    );
    let overlay = rc.overlay.lock().expect("overlay lock");
    for (name, t) in overlay.iter() {
        let _ = ctx.deregister_table(name.as_str())?;
        ctx.register_table(
            name.as_str(),
            frame(&ctx, &t.schema, &t.batches)?.into_view(),
        )?;
        catalog.tables.insert(name.clone(), u64::MAX);
    }
    Ok((ctx, catalog))
}

/// On a dry run, rows a task appends to a table (`recently_modified`): staged with the rows
/// already there (committed, or staged by an earlier task of the run), so that the run's later
/// tasks — the dirty ones — see them as a real run's would.
pub async fn stage_appended(rc: &super::RunContext<'_>, added: NewTable) -> Result<()> {
    let (ctx, catalog) = session(rc).await?;
    let mut batches = Vec::new();
    if catalog.tables.contains_key(&added.name) {
        for b in conform(ctx.table(added.name.as_str()).await?, &added.schema)?
            .collect()
            .await?
        {
            batches.push(engine::cast_batch(&b, &added.schema)?);
        }
    }
    batches.extend(added.batches);
    rc.stage_dry_run(NewTable {
        batches,
        known: Known::Changed,
        patch: None,
        ..added
    });
    Ok(())
}

/// The committed table `name`, or an error saying which task must run first.
pub async fn require(
    ctx: &SessionContext,
    catalog: &Catalog,
    name: &str,
    producer: &str,
) -> Result<DataFrame> {
    if !catalog.tables.contains_key(name) {
        return Err(crate::error::Error::TaskFailed(format!(
            "table `{name}` does not exist yet: run `{producer}` first (e.g. a synchronization or an earlier task of the job)"
        )));
    }
    Ok(ctx.table(name).await?)
}
