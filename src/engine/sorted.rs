//! Sorting rows on all their columns and dropping repeats (the link pairs of a
//! synchronization, `assigned_links`, and `assigned_roles`, whose rows are distinct already).
//! `DISTINCT` is a hash aggregate: for 13M pairs it builds a hash table as large as its input,
//! and the rows are sorted anyway. A DataFusion sort of 13M string pairs holds the input, each
//! sorted batch, the row-format keys of its merge and the output at once (4.4 GB at 1M
//! identities). [`sort_columns`] ranks each column once (equal values share a rank) and sorts
//! the rows by their ranks packed into one `u64`; when every column's rank fits in that key
//! ([`sort_packed`]), the output columns are read back from the sorted keys in order, as
//! dictionaries of each column's distinct values, so no column is gathered at random. The rank
//! sort pays where columns repeat values; a column of millions of distinct strings is ranked by
//! a comparison sort of them, slower than DataFusion's row-format sort (the correlation keys).

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Datum, DictionaryArray, RecordBatch, StringArray,
    UInt32Array, UInt64Array, make_comparator, new_empty_array,
};
use datafusion::arrow::compute::kernels::{boolean, cmp, numeric};
use datafusion::arrow::compute::{
    SortOptions, cast, concat, concat_batches, filter, filter_record_batch, interleave, rank,
    sort_to_indices, take,
};
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef, UInt32Type};
use datafusion::arrow::error::ArrowError;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::execution::spill_file::SpillFile;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_plan::SpillManager;
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, SpillMetrics};
use datafusion::physical_plan::sorts::streaming_merge::StreamingMergeBuilder;
use datafusion::prelude::{DataFrame, SessionContext};
use futures::StreamExt;

/// The rows of `df`, sorted on all its columns in order (ascending, NULLs first) and each
/// distinct row once, in batches of at most [`super::SLICE_ROWS`] rows. The rows are gathered
/// as they arrive, each string column into a dictionary, and sorted by their ranks
/// ([`sort_columns`]); what that takes is reserved in the session's memory pool as it grows.
/// When the pool refuses (a small `--memory-limit`), the rows gathered so far are sorted and
/// written to disk as a run, still dictionary-encoded (Arrow IPC, one dictionary a run), and
/// the gathering starts again; at the end DataFusion's streaming merge reads the runs back in
/// order, with the repeats across runs dropped as they pass ([`Dedupe`]).
///
/// The string columns come dictionary-encoded and the returned schema says so
/// ([`decoded_schema`] gives the plain one; `tasks::frames::frame` and the store's writer
/// decode such batches a batch at a time).
pub async fn sorted_distinct(
    ctx: &SessionContext,
    df: DataFrame,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    sorted_distinct_on(ctx, df, 1).await
}

/// [`sorted_distinct`], the rows gathered on `threads` threads ([`Gatherers`]): for a sort that
/// runs alone (a synchronization's link pairs), where it would keep one core of two. Beside
/// other queries (the role model's five tables), more threads only add dictionaries to merge.
pub async fn sorted_distinct_on(
    ctx: &SessionContext,
    df: DataFrame,
    threads: usize,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let (schema, batches, _runs) = sorted_distinct_runs(ctx, df, threads).await?;
    Ok((schema, batches))
}

/// [`sorted_distinct_on`], and how many runs went to disk.
async fn sorted_distinct_runs(
    ctx: &SessionContext,
    df: DataFrame,
    threads: usize,
) -> Result<(SchemaRef, Vec<RecordBatch>, usize)> {
    // The plan's types, all nullable: a union's branches can yield batches of other string
    // types (`Utf8View`) than the plan declares.
    let schema: SchemaRef = Arc::new(Schema::new(
        df.schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ));
    // The rows are encoded as they arrive, each column's memory reserved as it grows. Should
    // the pool refuse, the rows gathered so far are sorted, written to disk as a run and
    // dropped, and the gathering starts again; the runs are merged at the end. Registered as
    // able to spill, the gathering is held to its share of a fair pool and gives way before
    // other queries' sorts, which cannot.
    let encoded = encoded_schema(&schema);
    let pool = &ctx.runtime_env().memory_pool;
    let gathering = MemoryConsumer::new("sort_unique_gather")
        .with_can_spill(true)
        .register(pool);
    let spill = SpillManager::new(
        ctx.runtime_env(),
        SpillMetrics::new(&ExecutionPlanMetricsSet::new(), 0),
        Arc::clone(&encoded),
    );
    let mut gatherers = Gatherers::new(&encoded, threads);
    let (mut gathered_rows, mut runs) = (0, Vec::new());
    let mut stream = df.execute_stream().await?;
    while let Some(b) = stream.next().await {
        let b = super::cast_batch(&b?, &schema)?;
        gathered_rows += b.num_rows();
        let grown = gatherers.push(b).await?;
        // A run holds a slice's rows at least: a pool that refuses every batch must not make
        // a run of each.
        if gathering.try_grow(grown).is_err() && gathered_rows >= super::SLICE_ROWS {
            let full = std::mem::replace(&mut gatherers, Gatherers::new(&encoded, threads));
            runs.extend(spill_run(&spill, full, &encoded).await?);
            gathering.free();
            gathered_rows = 0;
        }
    }
    drop(stream);
    if runs.is_empty() {
        let out = sorted_run(gatherers, &encoded).await?;
        drop(gathering);
        return Ok((encoded, out, 0));
    }
    // The last rows go to disk too: the merge then holds only what its reservation covers.
    runs.extend(spill_run(&spill, gatherers, &encoded).await?);
    drop(gathering);
    let spilled = runs.len();
    tracing::debug!(runs = spilled, "sorted distinct rows: runs spilled to disk");
    // The runs read back and merged in order, the repeats across runs dropped as they pass.
    let streams = runs
        .into_iter()
        .map(|run| spill.read_spill_as_stream(run, None))
        .collect::<Result<Vec<_>>>()?;
    let ordering = LexOrdering::new(encoded.fields().iter().enumerate().map(|(i, f)| {
        let column = Arc::new(Column::new(f.name(), i));
        PhysicalSortExpr::new(column, SortOptions::new(false, true))
    }))
    .ok_or_else(|| DataFusionError::Internal("a table has columns".into()))?;
    let mut merged = StreamingMergeBuilder::new()
        .with_streams(streams)
        .with_schema(Arc::clone(&encoded))
        .with_expressions(&ordering)
        .with_metrics(BaselineMetrics::new(&ExecutionPlanMetricsSet::new(), 0))
        .with_batch_size(super::SLICE_ROWS)
        .with_reservation(MemoryConsumer::new("sort_unique_merge").register(pool))
        .build()?;
    let mut dedupe = Dedupe::default();
    let mut out = Vec::new();
    while let Some(batch) = merged.next().await {
        if let Some(kept) = dedupe.push(&batch?)? {
            out.push(kept);
        }
    }
    Ok((encoded, out, spilled))
}

/// The rows `gatherers` hold, sorted and each distinct row once ([`sort_columns`]), on a
/// blocking thread.
async fn sorted_run(gatherers: Gatherers, encoded: &SchemaRef) -> Result<Vec<RecordBatch>> {
    let encoded = Arc::clone(encoded);
    blocking(move || sort_columns(&encoded, gatherers.finish()?, super::SLICE_ROWS)).await
}

/// [`sorted_run`] written to a spill file of `spill` (none when there are no rows).
async fn spill_run(
    spill: &SpillManager,
    gatherers: Gatherers,
    encoded: &SchemaRef,
) -> Result<Option<Arc<dyn SpillFile>>> {
    let sorted = sorted_run(gatherers, encoded).await?;
    let spill = spill.clone();
    blocking(move || spill.spill_record_batch_and_finish(&sorted, "sort_unique")).await
}

/// `f` on a thread of tokio's blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| DataFusionError::External(Box::new(e)))?
}

/// `kept` and `new`, both sorted by the `order` columns (ascending, NULLs first) and disjoint,
/// merged in that order: the kept rows stay in their batches (zero-copy slices) and the new
/// rows are placed between them, found by binary search. A dirty task replaces a few owners'
/// rows of a table of millions: a sort-preserving merge would compare every row. `None` when
/// `kept` turns out not to be sorted where one batch meets the next.
pub fn splice(
    schema: &SchemaRef,
    kept: &[RecordBatch],
    new: &[RecordBatch],
    order: &[&str],
) -> Result<Option<Vec<RecordBatch>>> {
    let new = concat_batches(schema, &super::align(new, schema)?)?;
    let kept = super::align(kept, schema)?;
    let columns = order
        .iter()
        .map(|c| schema.index_of(c))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    // Row i of `a` against row j of `b`, on the order columns in turn.
    let comparator = |a: &RecordBatch, b: &RecordBatch| -> Result<_> {
        let options = SortOptions {
            descending: false,
            nulls_first: true,
        };
        let columns = columns
            .iter()
            .map(|&c| make_comparator(a.column(c), b.column(c), options))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(move |i: usize, j: usize| {
            columns
                .iter()
                .map(|f| f(i, j))
                .find(|o| o.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal)
        })
    };
    let mut out = Vec::with_capacity(kept.len() + 1);
    let mut next = 0; // the first new row not placed yet
    let mut previous: Option<RecordBatch> = None;
    for batch in kept.into_iter().filter(|b| b.num_rows() > 0) {
        let n = batch.num_rows();
        if let Some(p) = &previous
            && comparator(p, &batch)?(p.num_rows() - 1, 0).is_gt()
        {
            return Ok(None);
        }
        if next < new.num_rows() {
            let cmp = comparator(&batch, &new)?;
            let mut start = 0;
            while next < new.num_rows() {
                // The kept rows up to the new row `next` (kept first on a tie).
                let at = start + partition_point(n - start, |k| cmp(start + k, next).is_le());
                if at == n {
                    break;
                }
                if at > start {
                    out.push(batch.slice(start, at - start));
                }
                // The new rows before the kept row `at`.
                let end =
                    next + partition_point(new.num_rows() - next, |m| cmp(at, next + m).is_gt());
                out.push(new.slice(next, end - next));
                (start, next) = (at, end);
            }
            if start < n {
                out.push(batch.slice(start, n - start));
            }
        } else {
            out.push(batch.clone());
        }
        previous = Some(batch);
    }
    if next < new.num_rows() {
        out.push(new.slice(next, new.num_rows() - next));
    }
    Ok(Some(out))
}

/// The number of leading indices in `0..len` for which `pred` holds (`pred` holds for a
/// prefix).
fn partition_point(len: usize, pred: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, len);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// The rows of `df` in the order its plan yields them on a single partition: a projection, a
/// filter or the probe side of a hash join (`RightSemi`, `RightAnti`, `RightMark`) keeps the
/// order in which the scanned table is stored. With several partitions (even for one
/// in-memory table, which DataFusion splits) the rows of the partitions would interleave.
pub async fn collect_in_order(
    ctx: &SessionContext,
    df: DataFrame,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    Ok((schema, on_one_partition(ctx, df).collect().await?))
}

/// The rows of `parts` one part after the other, each read in its order ([`collect_in_order`])
/// and given `schema`, when each part's `column` strictly ascends (`None` otherwise): a table
/// whose parts each come sorted by that column, and follow each other in the table's order,
/// is then in order without a sort.
pub async fn concat_ascending(
    ctx: &SessionContext,
    parts: impl IntoIterator<Item = DataFrame>,
    column: &str,
    schema: &SchemaRef,
) -> Result<Option<Vec<RecordBatch>>> {
    let mut out = Vec::new();
    for df in parts {
        let (_, part) = collect_in_order(ctx, df).await?;
        if !strictly_ascending(&part, column)? {
            return Ok(None);
        }
        out.extend(super::align(&part, schema)?);
    }
    Ok(Some(out))
}

/// Like [`collect_in_order`], the rows as they come.
pub async fn stream_in_order(
    ctx: &SessionContext,
    df: DataFrame,
) -> Result<datafusion::physical_plan::SendableRecordBatchStream> {
    on_one_partition(ctx, df).execute_stream().await
}

/// The rows of `df` ordered by `column` (ascending, NULLs first): in the order its plan yields
/// them on one partition ([`collect_in_order`]) when that order is it already (a projection or
/// filter of a table stored in that order, such as a synchronized table's key), else sorted
/// by `column` alone. Sorting 5M rows of strings that are in order already costs more than the
/// query that produced them.
pub async fn collect_ordered_by(
    ctx: &SessionContext,
    df: DataFrame,
    column: &str,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let started = std::time::Instant::now();
    let (schema, batches) = collect_in_order(ctx, df).await?;
    let in_order = ascending(&batches, column)?;
    tracing::debug!(
        rows = batches.iter().map(RecordBatch::num_rows).sum::<usize>(),
        in_order,
        seconds = format!("{:.3}", started.elapsed().as_secs_f64()),
        "collected in stored order"
    );
    if in_order {
        return Ok((schema, batches));
    }
    let by = datafusion::prelude::ident(column).sort(true, true);
    let sorted = ctx.read_batches(batches)?.sort(vec![by])?.collect().await?;
    Ok((schema, sorted))
}

/// Whether `column` never decreases along the rows of `batches` (and holds no NULL: where a
/// NULL stands is left to a sort).
fn ascending(batches: &[RecordBatch], column: &str) -> Result<bool> {
    ascending_by(batches, column, false)
}

/// Whether `column` increases from each row to the next along the rows of `batches`, no two
/// rows equal, and holds no NULL: each value once, in order.
pub fn strictly_ascending(batches: &[RecordBatch], column: &str) -> Result<bool> {
    ascending_by(batches, column, true)
}

/// [`ascending`], equal neighbours refused with `strict`.
fn ascending_by(batches: &[RecordBatch], column: &str, strict: bool) -> Result<bool> {
    let out_of_order = if strict { cmp::lt_eq } else { cmp::lt };
    for compared in against_previous(batches, column, out_of_order) {
        let (c, decreases) = compared?;
        if c.null_count() > 0 || decreases.true_count() > 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The values of `column` along the rows of `batches`, each row whose value differs from the
/// row before it (the first row too), decoded from a dictionary: the distinct values, in
/// order, of a column the rows are sorted on (a link's `from` endpoint in its sorted pairs).
/// Compared a row with the next, as the rows come, where a hash aggregate (`DISTINCT`) of the
/// 13.6M membership pairs' endpoints built a table of 1.1M keys.
pub fn distinct_adjacent(batches: &[RecordBatch], column: &str) -> Result<Vec<ArrayRef>> {
    against_previous(batches, column, cmp::distinct)
        .map(|compared| {
            let (c, differs) = compared?;
            // The very first row has none before it (NULL): it is kept.
            let keep: BooleanArray = differs.iter().map(|d| Some(d.unwrap_or(true))).collect();
            let kept = filter(c.as_ref(), &keep)?;
            Ok(match kept.data_type() {
                DataType::Dictionary(_, value) => cast(&kept, value)?,
                _ => kept,
            })
        })
        .collect()
}

/// The rows of `a` and of `b` side by side, row `i` of one beside row `i` of the other, as
/// batches of `a`'s columns then `b`'s (`None` when their row counts differ). Cut where a batch
/// of either ends: no column is copied.
pub fn rows_beside(a: &[RecordBatch], b: &[RecordBatch]) -> Result<Option<Vec<RecordBatch>>> {
    let rows = |v: &[RecordBatch]| v.iter().map(RecordBatch::num_rows).sum::<usize>();
    let (Some(first_a), Some(first_b)) = (a.first(), b.first()) else {
        return Ok((rows(a) == rows(b)).then(Vec::new));
    };
    if rows(a) != rows(b) {
        return Ok(None);
    }
    let schema = Arc::new(Schema::new(
        first_a
            .schema()
            .fields()
            .iter()
            .chain(first_b.schema().fields().iter())
            .cloned()
            .collect::<Vec<_>>(),
    ));
    let mut out = Vec::new();
    let (mut ia, mut ib, mut oa, mut ob) = (0, 0, 0, 0);
    while ia < a.len() && ib < b.len() {
        let (ba, bb) = (&a[ia], &b[ib]);
        let n = (ba.num_rows() - oa).min(bb.num_rows() - ob);
        if n > 0 {
            let columns = ba
                .slice(oa, n)
                .columns()
                .iter()
                .chain(bb.slice(ob, n).columns())
                .cloned()
                .collect();
            out.push(RecordBatch::try_new(Arc::clone(&schema), columns)?);
        }
        (oa, ob) = (oa + n, ob + n);
        if oa == ba.num_rows() {
            (ia, oa) = (ia + 1, 0);
        }
        if ob == bb.num_rows() {
            (ib, ob) = (ib + 1, 0);
        }
    }
    Ok(Some(out))
}

/// Each row of `batch` turned into a row per column of `columns` whose keep column holds for
/// it: (`key`'s value, the column's name, its value), in the rows' order and for each row in
/// the order of `columns` — an `UNNEST` of the columns, in place. `columns` are (name, value
/// column, keep column), the value columns text; a NULL keep drops the row, as a filter does.
pub fn unpivot(
    batch: &RecordBatch,
    key: &str,
    columns: &[(String, String, String)],
) -> Result<[ArrayRef; 3]> {
    let column = |name: &str| -> Result<ArrayRef> {
        Ok(Arc::clone(batch.column(batch.schema().index_of(name)?)))
    };
    let values = columns
        .iter()
        .map(|(_, v, _)| Ok(cast(&column(v)?, &DataType::Utf8)?))
        .collect::<Result<Vec<_>>>()?;
    let keeps = columns
        .iter()
        .map(|(_, _, k)| Ok(column(k)?.as_boolean().clone()))
        .collect::<Result<Vec<_>>>()?;
    // The (column, row) of each output row, in output order.
    let mut pairs = Vec::with_capacity(batch.num_rows() * columns.len());
    for row in 0..batch.num_rows() {
        for (c, keep) in keeps.iter().enumerate() {
            if keep.is_valid(row) && keep.value(row) {
                pairs.push((c, row));
            }
        }
    }
    let rows: UInt32Array = pairs.iter().map(|&(_, r)| r as u32).collect();
    let which: UInt32Array = pairs.iter().map(|&(c, _)| c as u32).collect();
    let names = StringArray::from_iter_values(columns.iter().map(|(n, _, _)| n.as_str()));
    let values: Vec<&dyn Array> = values.iter().map(|v| v.as_ref()).collect();
    Ok([
        take(column(key)?.as_ref(), &rows, None)?,
        take(&names, &which, None)?,
        interleave(&values, &pairs)?,
    ])
}

/// Each non-empty batch's `column`, with `op` of each of its rows against the row before it:
/// the first against the previous batch's last, and NULL for the very first row.
fn against_previous<'a>(
    batches: &'a [RecordBatch],
    column: &'a str,
    op: impl Fn(&dyn Datum, &dyn Datum) -> std::result::Result<BooleanArray, ArrowError> + 'a,
) -> impl Iterator<Item = Result<(ArrayRef, BooleanArray)>> + 'a {
    let mut previous: Option<ArrayRef> = None;
    batches.iter().filter(|b| b.num_rows() > 0).map(move |b| {
        let c = Arc::clone(b.column(b.schema().index_of(column)?));
        let n = c.len();
        let first = match &previous {
            Some(last) => op(&c.slice(0, 1), last)?,
            None => BooleanArray::new_null(1),
        };
        let rest = op(&c.slice(1, n - 1), &c.slice(0, n - 1))?;
        let compared = concat(&[&first, &rest])?;
        previous = Some(c.slice(n - 1, 1));
        Ok((c, compared.as_boolean().clone()))
    })
}

/// `df` planned on a single partition.
fn on_one_partition(ctx: &SessionContext, df: DataFrame) -> DataFrame {
    let mut config = ctx.copied_config();
    config.options_mut().execution.target_partitions = 1;
    // The state shares the session's catalogs: building it must not register a new (empty)
    // default catalog over them.
    config
        .options_mut()
        .catalog
        .create_default_catalog_and_schema = false;
    let state = datafusion::execution::SessionStateBuilder::new_from_existing(ctx.state())
        .with_config(config)
        .build();
    DataFrame::new(state, df.into_unoptimized_plan())
}

/// [`sort_unique_encoded`], decoded to `schema`.
#[cfg(test)]
fn sort_unique(
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
    batch_rows: usize,
) -> Result<Vec<RecordBatch>> {
    let (_, out) = sort_unique_encoded(schema, batches, batch_rows)?;
    out.iter().map(|b| super::cast_batch(b, schema)).collect()
}

/// The rows of `batches`, sorted on all columns in order (ascending, NULLs first, strings by
/// their bytes: DataFusion's `ORDER BY` of the same columns), each distinct row once, in
/// batches of at most `batch_rows` rows, with the schema of those batches: string columns
/// come dictionary-encoded ([`encoded_schema`]), each distinct value held once. The 13.6M
/// membership pairs of 1M identities are 1.3 GB of text but 1.15M distinct values; gathered
/// and output as text they were held three times over at the peak.
#[cfg(test)]
fn sort_unique_encoded(
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
    batch_rows: usize,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let encoded_schema = encoded_schema(schema);
    // Each column gathered whole, side by side.
    let columns = side_by_side(encoded_schema.fields().iter().enumerate(), |(j, field)| {
        let mut g = Gathering::new(field.data_type());
        for b in &batches {
            g.push(b.column(j))?;
        }
        g.finish()
    })?;
    drop(batches);
    let out = sort_columns(&encoded_schema, columns, batch_rows)?;
    Ok((encoded_schema, out))
}

/// `f` of each item, each on a thread of its own.
fn side_by_side<T: Send, R: Send>(
    items: impl Iterator<Item = T>,
    f: impl Fn(T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    super::on_threads(items, f).into_iter().collect()
}

/// The rows of `columns` (of `encoded_schema`, as [`Gathered`] builds them) sorted on all
/// columns and each distinct row once, in batches of at most `batch_rows` rows.
fn sort_columns(
    encoded_schema: &SchemaRef,
    columns: Vec<ArrayRef>,
    batch_rows: usize,
) -> Result<Vec<RecordBatch>> {
    let rows = columns.first().map_or(0, |c| c.len());
    if rows == 0 {
        return Ok(Vec::new());
    }
    if u32::try_from(rows).is_err() {
        return Err(DataFusionError::Execution(format!(
            "{rows} rows are too many to sort in memory (at most {})",
            u32::MAX
        )));
    }
    // Each column ranked once, side by side (a sort of its distinct values), for either path.
    let ranked = side_by_side(columns.iter(), dense_ranks)?;
    match sort_packed(encoded_schema, &ranked, batch_rows, 64)? {
        Some(out) => Ok(out),
        None => sort_gathered(encoded_schema, columns, &ranked, batch_rows),
    }
}

/// [`sort_columns`] by a sort of the row indices, each column gathered in that order: for rows
/// whose ranks do not fit [`sort_packed`]'s key.
fn sort_gathered(
    encoded_schema: &SchemaRef,
    columns: Vec<ArrayRef>,
    ranked: &[DenseRanks],
    batch_rows: usize,
) -> Result<Vec<RecordBatch>> {
    let rows = columns.first().map_or(0, |c| c.len());
    let ranks = ranked.iter().map(DenseRanks::row_ranks);
    // The rank of a row among rows: each column's rank packed after the rank of the columns
    // before it (ranks are at most the row count, below 2^32); a packed key is ranked again
    // before the next column is packed after it.
    let shift = UInt64Array::new_scalar(1u64 << 32);
    let mut key: Option<UInt64Array> = None;
    for (j, r) in ranks.into_iter().enumerate() {
        key = Some(match key {
            None => r,
            Some(k) => {
                let k = if j == 1 {
                    k
                } else {
                    UInt64Array::from_iter_values(rank(&k, None)?.into_iter().map(u64::from))
                };
                let packed = numeric::add(&numeric::mul(&k, &shift)?, &r)?;
                packed
                    .as_any()
                    .downcast_ref::<UInt64Array>()
                    .expect("u64 arithmetic gives u64")
                    .clone()
            }
        });
    }
    let key = key.expect("a table has columns");
    let order = sort_to_indices(&key, None, None)?;
    // Equal keys are equal rows: a row is kept when its key differs from the one before it.
    let sorted = take(&key, &order, None)?;
    let differs = cmp::neq(&sorted.slice(1, rows - 1), &sorted.slice(0, rows - 1))?;
    let keep: BooleanArray = std::iter::once(Some(true))
        .chain(differs.values().iter().map(Some))
        .collect();
    let order = filter(&order, &keep)?;
    drop((key, sorted, keep));
    let kept = order.len();
    (0..kept.div_ceil(batch_rows))
        .map(|k| {
            let part = order.slice(k * batch_rows, batch_rows.min(kept - k * batch_rows));
            let columns = columns
                .iter()
                .map(|c| take(c.as_ref(), &part, None))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Ok(RecordBatch::try_new(Arc::clone(encoded_schema), columns)?)
        })
        .collect()
}

/// [`sort_columns`] when every row's dense ranks (0 for NULL, 1.. for each column's distinct
/// values in order) fit side by side in `max_bits` bits: the rows are sorted as those packed
/// keys alone, and each output column is read back from the sorted keys — a dictionary of the
/// column's distinct values in order, keyed by rank — instead of being gathered row by row in
/// sorted order. Gathering 13.6M membership pairs at random took most of the sort's time (every
/// row a cache miss, twice); the keys are read in order. `None` when the ranks do not fit
/// (more columns, or more distinct values, than the bits hold).
fn sort_packed(
    encoded_schema: &SchemaRef,
    ranked: &[DenseRanks],
    batch_rows: usize,
    max_bits: u32,
) -> Result<Option<Vec<RecordBatch>>> {
    let bits: Vec<u32> = ranked
        .iter()
        .map(|r| u64::BITS - (r.distinct.len() as u64).leading_zeros())
        .collect();
    if bits.iter().sum::<u32>() > max_bits {
        return Ok(None);
    }
    let rows = ranked.first().map_or(0, |r| r.keys.len());
    let mut packed = vec![0u64; rows];
    for (r, &b) in ranked.iter().zip(&bits) {
        for (p, k) in packed.iter_mut().zip(r.keys.iter()) {
            *p = (*p << b) | r.rank_of(k);
        }
    }
    packed.sort_unstable();
    packed.dedup();
    // Column j's rank sits above the bits of the columns after it.
    let shifts: Vec<u32> = (0..bits.len())
        .map(|j| bits[j + 1..].iter().sum())
        .collect();
    let out = packed
        .chunks(batch_rows)
        .map(|part| {
            let columns = ranked
                .iter()
                .zip(bits.iter().zip(&shifts))
                .zip(encoded_schema.fields())
                .map(|((r, (&b, &shift)), field)| {
                    let mask = (1u64 << b) - 1;
                    let keys: UInt32Array = part
                        .iter()
                        .map(|p| match (p >> shift) & mask {
                            0 => None,
                            rank => Some((rank - 1) as u32),
                        })
                        .collect();
                    let column: ArrayRef = match field.data_type() {
                        DataType::Dictionary(_, _) => Arc::new(
                            DictionaryArray::<UInt32Type>::try_new(keys, Arc::clone(&r.distinct))?,
                        ),
                        ty => {
                            let plain = take(r.distinct.as_ref(), &keys, None)?;
                            if plain.data_type() == ty {
                                plain
                            } else {
                                cast(&plain, ty)?
                            }
                        }
                    };
                    Ok(column)
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(RecordBatch::try_new(Arc::clone(encoded_schema), columns)?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(out))
}

/// A column as [`sort_columns`] ranks it: its dictionary keys, each dictionary value's dense
/// rank (1.. in value order, equal values alike, 0 for a NULL value) and the distinct values in
/// rank order (rank `r` is `distinct[r - 1]`).
struct DenseRanks {
    keys: UInt32Array,
    value_ranks: Vec<u64>,
    distinct: ArrayRef,
}

impl DenseRanks {
    /// The rank of a row's dictionary key: 0 for NULL.
    fn rank_of(&self, key: Option<u32>) -> u64 {
        key.map_or(0, |k| self.value_ranks[k as usize])
    }

    /// Each row's rank, in row order.
    fn row_ranks(&self) -> UInt64Array {
        UInt64Array::from_iter_values(self.keys.iter().map(|k| self.rank_of(k)))
    }
}

/// The [`DenseRanks`] of a column: dictionary-encoded first (a hash pass) unless it is, so only
/// its distinct values are sorted. A dictionary's values may repeat (gathered on several
/// threads, [`Gatherers`]); equal values share a rank.
fn dense_ranks(column: &ArrayRef) -> Result<DenseRanks> {
    let encoded = as_u32_dictionary(column)?;
    let encoded = encoded
        .as_any()
        .downcast_ref::<DictionaryArray<UInt32Type>>()
        .expect("cast to a u32 dictionary");
    let values = encoded.values();
    let order = sort_to_indices(values.as_ref(), None, None)?;
    let same = make_comparator(values.as_ref(), values.as_ref(), SortOptions::default())?;
    let mut value_ranks = vec![0u64; values.len()];
    let mut firsts: Vec<u32> = Vec::new();
    let mut previous: Option<usize> = None;
    for i in order.values().iter().map(|&i| i as usize) {
        if values.is_null(i) {
            continue;
        }
        if previous.is_none_or(|p| same(p, i).is_ne()) {
            firsts.push(i as u32);
        }
        value_ranks[i] = firsts.len() as u64;
        previous = Some(i);
    }
    let distinct = take(values.as_ref(), &UInt32Array::from(firsts), None)?;
    Ok(DenseRanks {
        keys: encoded.keys().clone(),
        value_ranks,
        distinct,
    })
}

/// A column as a dictionary of `u32` keys (string views and large strings as plain strings).
fn as_u32_dictionary(column: &ArrayRef) -> Result<ArrayRef> {
    let plain = match column.data_type() {
        DataType::Utf8View | DataType::LargeUtf8 => cast(column, &DataType::Utf8)?,
        DataType::BinaryView | DataType::LargeBinary => cast(column, &DataType::Binary)?,
        _ => Arc::clone(column),
    };
    let value_type = match plain.data_type() {
        DataType::Dictionary(_, v) => v.as_ref().clone(),
        other => other.clone(),
    };
    let dictionary = DataType::Dictionary(Box::new(DataType::UInt32), Box::new(value_type));
    Ok(if *plain.data_type() == dictionary {
        plain
    } else {
        cast(&plain, &dictionary)?
    })
}

/// `schema` with its string columns as dictionaries of `u32` keys, as [`sort_unique_encoded`]
/// returns them; [`decoded_schema`] is the reverse.
pub fn encoded_schema(schema: &SchemaRef) -> SchemaRef {
    retyped(schema, |ty| match ty {
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => Some(DataType::Dictionary(
            Box::new(DataType::UInt32),
            Box::new(DataType::Utf8),
        )),
        _ => None,
    })
}

/// `schema` with each dictionary column as its values' type.
pub fn decoded_schema(schema: &SchemaRef) -> SchemaRef {
    retyped(schema, |ty| match ty {
        DataType::Dictionary(_, v) => Some(v.as_ref().clone()),
        _ => None,
    })
}

/// `schema` with the types `f` changes (`None`: unchanged).
fn retyped(schema: &SchemaRef, f: impl Fn(&DataType) -> Option<DataType>) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|field| match f(field.data_type()) {
                Some(ty) => field.as_ref().clone().with_data_type(ty),
                None => field.as_ref().clone(),
            })
            .collect::<Vec<_>>(),
    ))
}

/// Rows gathered column by column as they arrive, for [`sort_columns`]: strings into
/// dictionaries (each distinct value stored once), anything else as arrays to concatenate.
struct Gathered {
    columns: Vec<Gathering>,
}

impl Gathered {
    fn new(encoded: &SchemaRef) -> Self {
        Self {
            columns: encoded
                .fields()
                .iter()
                .map(|f| Gathering::new(f.data_type()))
                .collect(),
        }
    }

    /// Appends the batch's rows; returns about how many bytes they add to the gathered columns
    /// and to the sort of them (keys, ranks, order: [`sort_columns`]).
    fn push(&mut self, batch: &RecordBatch) -> Result<usize> {
        let mut grown = batch.num_rows() * (16 * self.columns.len() + 24);
        for (g, c) in self.columns.iter_mut().zip(batch.columns()) {
            grown += g.push(c)?;
        }
        Ok(grown)
    }

    fn finish(self) -> Result<Vec<ArrayRef>> {
        self.columns.into_iter().map(Gathering::finish).collect()
    }
}

/// [`Gathered`] on threads of their own, the batches dealt out to them in turn: looking each
/// string up in its dictionary is most of a gathering's time (13.6M membership pairs at 1M
/// identities), and the stream of rows would otherwise wait on one thread doing it. The rows'
/// order does not matter, as they are sorted next. Each thread keeps its own dictionaries, so
/// a value can be stored by more than one; equal values get equal ranks all the same
/// ([`dense_ranks`]).
struct Gatherers {
    senders: Vec<tokio::sync::mpsc::Sender<RecordBatch>>,
    threads: Vec<std::thread::JoinHandle<Result<Gathered>>>,
    /// Bytes the threads' gathered columns grew by, not yet reported by [`Gatherers::push`].
    grown: Arc<std::sync::atomic::AtomicUsize>,
    next: usize,
}

impl Gatherers {
    fn new(encoded: &SchemaRef, threads: usize) -> Self {
        let grown = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (senders, threads) = (0..threads.max(1))
            .map(|_| {
                let (tx, mut rx) = tokio::sync::mpsc::channel::<RecordBatch>(2);
                let (encoded, grown) = (Arc::clone(encoded), Arc::clone(&grown));
                let thread = std::thread::spawn(move || {
                    let mut gathered = Gathered::new(&encoded);
                    while let Some(b) = rx.blocking_recv() {
                        let n = gathered.push(&b)?;
                        grown.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(gathered)
                });
                (tx, thread)
            })
            .unzip();
        Self {
            senders,
            threads,
            grown,
            next: 0,
        }
    }

    /// Hands the batch to the next thread; returns the bytes gathered since the last call
    /// (the threads lag behind by at most two batches each).
    async fn push(&mut self, batch: RecordBatch) -> Result<usize> {
        let to = self.next % self.senders.len();
        self.next += 1;
        if self.senders[to].send(batch).await.is_err() {
            // The thread stopped on an error: its result says which.
            let thread = self.threads.swap_remove(to);
            return Err(
                match thread.join().expect("a gathering thread does not panic") {
                    Err(e) => e,
                    Ok(_) => DataFusionError::Internal("a gathering thread stopped".into()),
                },
            );
        }
        Ok(self.grown.swap(0, std::sync::atomic::Ordering::Relaxed))
    }

    /// The columns gathered by all threads, each the concatenation of theirs.
    fn finish(self) -> Result<Vec<ArrayRef>> {
        drop(self.senders);
        let mut parts = Vec::with_capacity(self.threads.len());
        for t in self.threads {
            let gathered = t.join().expect("a gathering thread does not panic")?;
            parts.push(gathered.finish()?);
        }
        let width = parts.first().map_or(0, Vec::len);
        (0..width)
            .map(|j| {
                let column: Vec<&dyn Array> = parts.iter().map(|p| p[j].as_ref()).collect();
                Ok(concat(&column)?)
            })
            .collect()
    }
}

/// A dictionary of `u32` keys and text values, as [`Gathering`] builds them.
fn is_text_dictionary(ty: &DataType) -> bool {
    matches!(ty, DataType::Dictionary(k, v) if **k == DataType::UInt32 && **v == DataType::Utf8)
}

/// One column of [`Gathered`].
enum Gathering {
    Text {
        builder: Box<datafusion::arrow::array::StringDictionaryBuilder<UInt32Type>>,
        distinct: usize,
    },
    Other(DataType, Vec<ArrayRef>),
}

impl Gathering {
    fn new(ty: &DataType) -> Self {
        match ty {
            ty if is_text_dictionary(ty) => Self::Text {
                builder: Default::default(),
                distinct: 0,
            },
            other => Self::Other(other.clone(), Vec::new()),
        }
    }

    /// Appends a column's values; returns the bytes of the values it stored.
    fn push(&mut self, column: &ArrayRef) -> Result<usize> {
        match self {
            Self::Text { builder, .. } if is_text_dictionary(column.data_type()) => {
                // Dictionary-encoded already (a synchronization's parsed link pairs, one
                // dictionary a batch): each of the batch's values is looked up once, not each
                // row's. Which of them are new here is not known, so their bytes all count: a
                // value repeated across batches (a group) is counted in each (about a fifth
                // more than the gathered columns hold, at 1M identities; the pool's figure
                // errs high).
                let dictionary = column.as_dictionary::<UInt32Type>();
                let values = dictionary.values().as_string::<i32>();
                let bytes = values.value_data().len() + 16 * values.len();
                let typed = dictionary.downcast_dict::<StringArray>().ok_or_else(|| {
                    DataFusionError::Internal("a text dictionary has text values".into())
                })?;
                builder.extend_dictionary(&typed)?;
                Ok(bytes)
            }
            Self::Text { builder, distinct } => {
                let text = match column.data_type() {
                    DataType::Utf8 => Arc::clone(column),
                    _ => cast(column, &DataType::Utf8)?,
                };
                // A run of equal values is looked up once: exports often list an account's
                // rows together (its ~12 memberships at 1M identities), and the hash lookup
                // is most of the gathering's time.
                let mut bytes = 0;
                let mut values = datafusion::arrow::array::as_string_array(&text)
                    .iter()
                    .peekable();
                while let Some(v) = values.next() {
                    let mut n = 1;
                    while values.next_if_eq(&v).is_some() {
                        n += 1;
                    }
                    match v {
                        Some(v) => {
                            if builder.append_n(v, n)? as usize == *distinct {
                                *distinct += 1;
                                bytes += v.len() + 16;
                            }
                        }
                        None => builder.append_nulls(n),
                    }
                }
                Ok(bytes)
            }
            Self::Other(_, parts) => {
                parts.push(Arc::clone(column));
                Ok(column.to_data().get_slice_memory_size()?)
            }
        }
    }

    fn finish(self) -> Result<ArrayRef> {
        Ok(match self {
            Self::Text { mut builder, .. } => Arc::new(builder.finish()),
            Self::Other(ty, parts) if parts.is_empty() => new_empty_array(&ty),
            Self::Other(_, parts) => concat(&parts.iter().map(|c| c.as_ref()).collect::<Vec<_>>())?,
        })
    }
}

/// Drops the repeats of rows that come sorted on all their columns (equal rows adjacent), batch
/// by batch: a row is kept when it differs from the row before it (NULLs equal each other).
#[derive(Default)]
struct Dedupe {
    /// The last row seen so far.
    previous: Option<RecordBatch>,
}

impl Dedupe {
    /// The rows of `batch` that are not repeats, if any.
    fn push(&mut self, batch: &RecordBatch) -> Result<Option<RecordBatch>> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(None);
        }
        // Row 0 against the last row seen so far, rows 1.. each against the row before it.
        let mut first = self.previous.is_none();
        let mut rest = BooleanArray::from(vec![false; n - 1]);
        for (j, column) in batch.columns().iter().enumerate() {
            if let Some(p) = &self.previous {
                first |= cmp::distinct(&column.slice(0, 1), p.column(j))?.value(0);
            }
            let differs = cmp::distinct(&column.slice(1, n - 1), &column.slice(0, n - 1))?;
            rest = boolean::or(&rest, &differs)?;
        }
        let keep: BooleanArray = std::iter::once(first)
            .chain(rest.values().iter())
            .map(Some)
            .collect();
        let kept = filter_record_batch(batch, &keep)?;
        self.previous = Some(batch.slice(n - 1, 1));
        Ok((kept.num_rows() > 0).then_some(kept))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::StringArray;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::prelude::ident;

    use super::*;

    fn batch(rows: &[(Option<&str>, &str)]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Utf8, true),
            Field::new("b", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )
        .unwrap()
    }

    /// Repeats are dropped within a batch and across batches (an empty batch between), NULL
    /// once as a value of its own, dictionaries decoded, and the values kept in order.
    #[test]
    fn adjacent_repeats_are_dropped_across_batches() {
        let input = vec![
            batch(&[(None, "x"), (None, "y"), (Some("a"), "x"), (Some("a"), "y")]),
            batch(&[]),
            batch(&[(Some("a"), "z"), (Some("b"), "x")]),
            batch(&[(Some("b"), "y"), (Some("c"), "x"), (Some("c"), "x")]),
        ];
        let plain = distinct_adjacent(&input, "a").unwrap();
        let encoded_schema = encoded_schema(&input[0].schema());
        let encoded: Vec<RecordBatch> = input
            .iter()
            .map(|b| super::super::cast_batch(b, &encoded_schema).unwrap())
            .collect();
        assert!(matches!(
            encoded[0].column(0).data_type(),
            DataType::Dictionary(_, _)
        ));
        for out in [plain, distinct_adjacent(&encoded, "a").unwrap()] {
            let values: Vec<Option<String>> = out
                .iter()
                .flat_map(|a| {
                    a.as_string::<i32>()
                        .iter()
                        .map(|v| v.map(str::to_string))
                        .collect::<Vec<_>>()
                })
                .collect();
            assert_eq!(
                values,
                vec![None, Some("a".into()), Some("b".into()), Some("c".into())]
            );
        }
        assert!(distinct_adjacent(&[], "a").unwrap().is_empty());
    }

    /// Rows of batches cut in different places are put beside each other row for row; row
    /// counts that differ give `None`.
    #[test]
    fn rows_are_put_beside_each_other_across_batch_ends() {
        let a = vec![
            batch(&[(Some("1"), "x"), (Some("2"), "y"), (Some("3"), "z")]),
            batch(&[]),
            batch(&[(Some("4"), "w"), (None, "v")]),
        ];
        let b = vec![
            batch(&[(Some("p"), "P")]),
            batch(&[
                (Some("q"), "Q"),
                (Some("r"), "R"),
                (Some("s"), "S"),
                (Some("t"), "T"),
            ]),
        ];
        let beside = rows_beside(&a, &b).unwrap().unwrap();
        assert_eq!(beside[0].num_columns(), 4);
        let rows: Vec<String> = beside
            .iter()
            .flat_map(|r| {
                (0..r.num_rows()).map(move |i| {
                    (0..4)
                        .map(|c| r.column(c).as_string::<i32>().value(i).to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
            })
            .collect();
        assert_eq!(rows, ["1 x p P", "2 y q Q", "3 z r R", "4 w s S", " v t T"]);
        // Cut where either side's batch ends: after rows 1, 3 and 5.
        assert_eq!(
            beside.iter().map(RecordBatch::num_rows).collect::<Vec<_>>(),
            [1, 2, 2]
        );
        assert!(beside[2].column(0).is_null(1));
        assert!(rows_beside(&a, &b[1..]).unwrap().is_none());
        assert!(rows_beside(&[], &[]).unwrap().unwrap().is_empty());
        assert!(rows_beside(&a, &[]).unwrap().is_none());
    }

    /// Each row gives a row per value column whose keep flag is true (false and NULL drop
    /// it), in row order and then column order, the key repeated beside the column's name.
    #[test]
    fn columns_are_unpivoted_in_row_then_column_order() {
        use datafusion::arrow::array::BooleanArray;
        let schema = Arc::new(Schema::new(vec![
            Field::new("key", DataType::Utf8, true),
            Field::new("v0", DataType::Utf8, true),
            Field::new("k0", DataType::Boolean, true),
            Field::new("v1", DataType::Utf8View, true),
            Field::new("k1", DataType::Boolean, true),
        ]));
        let b = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["a", "b", "c"])),
                Arc::new(StringArray::from(vec![Some("a0"), None, Some("c0")])),
                Arc::new(BooleanArray::from(vec![
                    Some(true),
                    Some(true),
                    Some(false),
                ])),
                Arc::new(datafusion::arrow::array::StringViewArray::from(vec![
                    "a1", "b1", "c1",
                ])),
                Arc::new(BooleanArray::from(vec![Some(true), None, Some(true)])),
            ],
        )
        .unwrap();
        let columns = [
            ("first".to_string(), "v0".to_string(), "k0".to_string()),
            ("second".to_string(), "v1".to_string(), "k1".to_string()),
        ];
        let [key, name, value] = unpivot(&b, "key", &columns).unwrap();
        let text = |a: &ArrayRef| -> Vec<Option<String>> {
            a.as_string::<i32>()
                .iter()
                .map(|v| v.map(str::to_string))
                .collect()
        };
        let some =
            |v: &[&str]| -> Vec<Option<String>> { v.iter().map(|s| Some(s.to_string())).collect() };
        assert_eq!(text(&key), some(&["a", "a", "b", "c"]));
        assert_eq!(text(&name), some(&["first", "second", "first", "second"]));
        assert_eq!(
            text(&value),
            vec![
                Some("a0".into()),
                Some("a1".into()),
                None,
                Some("c1".into())
            ]
        );
    }

    #[test]
    fn sorts_and_drops_repeats_within_and_across_batches() {
        let input = vec![
            batch(&[(Some("b"), "y"), (None, "x"), (Some("a"), "y"), (None, "x")]),
            batch(&[]),
            // Repeats rows of the first batch, and strings that share a prefix.
            batch(&[(Some("a"), "y"), (Some("ab"), "a"), (Some("a"), "x")]),
            batch(&[(Some("b"), "y"), (Some("a"), "y"), (Some("b"), "x")]),
        ];
        let schema = input[0].schema();
        let out = sort_unique(&schema, input, 2).unwrap();
        assert!(out.iter().all(|b| b.num_rows() == 2), "batches of 2 rows");
        let all = datafusion::arrow::compute::concat_batches(&schema, &out).unwrap();
        assert_eq!(
            all,
            batch(&[
                (None, "x"),
                (Some("a"), "x"),
                (Some("a"), "y"),
                (Some("ab"), "a"),
                (Some("b"), "x"),
                (Some("b"), "y")
            ])
        );
        assert!(
            sort_unique(&schema, vec![batch(&[])], 2)
                .unwrap()
                .is_empty()
        );
    }

    /// Runs of equal values (and of NULLs), within a batch and across two, are gathered as
    /// their rows: each row keeps its value, each distinct value is stored and counted once.
    #[test]
    fn runs_of_equal_values_are_gathered_row_by_row() {
        let ty = DataType::Dictionary(Box::new(DataType::UInt32), Box::new(DataType::Utf8));
        let mut g = Gathering::new(&ty);
        let parts: [Vec<Option<&str>>; 3] = [
            vec![
                Some("aa"),
                Some("aa"),
                None,
                None,
                Some("aa"),
                Some("b"),
                Some("b"),
            ],
            vec![Some("b"), None, Some("ccc")],
            vec![Some("ccc"), Some("aa")],
        ];
        let mut bytes = 0;
        for p in &parts {
            let column: ArrayRef = Arc::new(StringArray::from(p.clone()));
            bytes += g.push(&column).unwrap();
        }
        assert_eq!(
            bytes,
            (2 + 16) + (1 + 16) + (3 + 16),
            "each distinct value once"
        );
        let gathered = g.finish().unwrap();
        let dict = gathered
            .as_any()
            .downcast_ref::<datafusion::arrow::array::DictionaryArray<UInt32Type>>()
            .unwrap();
        assert_eq!(dict.values().len(), 3, "three distinct values stored");
        let text = cast(&gathered, &DataType::Utf8).unwrap();
        let expected: Vec<Option<&str>> = parts.concat();
        assert_eq!(
            datafusion::arrow::array::as_string_array(&text)
                .iter()
                .collect::<Vec<_>>(),
            expected
        );
    }

    /// Columns that come dictionary-encoded (a synchronization's parsed pairs, one dictionary
    /// a batch, with NULL keys and a value no row uses) gather to the same rows as their
    /// text, each distinct value stored once; the bytes counted are each batch's dictionary.
    #[test]
    fn dictionary_columns_are_gathered_as_their_rows() {
        let ty = DataType::Dictionary(Box::new(DataType::UInt32), Box::new(DataType::Utf8));
        let mut g = Gathering::new(&ty);
        let parts: [(Vec<Option<u32>>, Vec<&str>); 3] = [
            (vec![Some(0), Some(0), None, Some(1)], vec!["aa", "b"]),
            (vec![Some(1), Some(0), Some(1)], vec!["ccc", "b", "unused"]),
            (vec![None, Some(0)], vec!["aa"]),
        ];
        let mut bytes = 0;
        let mut expected: Vec<Option<&str>> = Vec::new();
        for (keys, values) in &parts {
            let column: ArrayRef = Arc::new(
                DictionaryArray::<UInt32Type>::try_new(
                    UInt32Array::from(keys.clone()),
                    Arc::new(StringArray::from(values.clone())),
                )
                .unwrap(),
            );
            bytes += g.push(&column).unwrap();
            expected.extend(keys.iter().map(|k| k.map(|k| values[k as usize])));
        }
        assert_eq!(bytes, (3 + 32) + (10 + 48) + (2 + 16));
        let gathered = g.finish().unwrap();
        let dict = gathered.as_dictionary::<UInt32Type>();
        let mut stored: Vec<&str> = dict.values().as_string::<i32>().iter().flatten().collect();
        stored.sort_unstable();
        assert_eq!(stored, ["aa", "b", "ccc", "unused"], "each value once");
        let text = cast(&gathered, &DataType::Utf8).unwrap();
        assert_eq!(text.as_string::<i32>().iter().collect::<Vec<_>>(), expected);
        // Sorted, each row once: the value no row uses is no row.
        let schema = Arc::new(Schema::new(vec![Field::new("a", ty, true)]));
        let sorted = sort_columns(&schema, vec![gathered], 100).unwrap();
        let sorted = cast(sorted[0].column(0), &DataType::Utf8).unwrap();
        assert_eq!(
            sorted.as_string::<i32>().iter().collect::<Vec<_>>(),
            [None, Some("aa"), Some("b"), Some("ccc")]
        );
    }

    /// Batches dealt out to three threads, the same values reaching several of them: each
    /// thread's dictionary stores them again, yet the sort ranks equal values equally, so the
    /// repeats across threads are dropped and every row is there once; the bytes reported add
    /// up to what the threads stored.
    #[tokio::test]
    async fn rows_gathered_on_several_threads_sort_as_one() {
        let input = [
            batch(&[(Some("b"), "y"), (None, "x"), (Some("a"), "y")]),
            batch(&[(Some("a"), "y"), (Some("b"), "y")]),
            batch(&[(Some("c"), "x"), (Some("a"), "x"), (None, "x")]),
            batch(&[(Some("b"), "y")]),
        ];
        let schema = input[0].schema();
        let encoded = encoded_schema(&schema);
        let mut g = Gatherers::new(&encoded, 3);
        let mut grown = 0;
        for b in &input {
            grown += g.push(b.clone()).await.unwrap();
        }
        let columns = g.finish().unwrap();
        assert_eq!(columns[0].len(), 9, "every row gathered");
        // What is not reported by the last push: the threads may lag behind it.
        assert!(grown <= 9 * (16 * 2 + 24) + 4 * 17 + 4 * 17);
        let out = sort_columns(&encoded, columns, 100).unwrap();
        let out: Vec<RecordBatch> = out
            .iter()
            .map(|b| crate::engine::cast_batch(b, &schema).unwrap())
            .collect();
        assert_eq!(
            pairs(&out),
            [
                (None, "x"),
                (Some("a"), "x"),
                (Some("a"), "y"),
                (Some("b"), "y"),
                (Some("c"), "x")
            ]
            .map(|(a, b)| (a.map(String::from), b.to_string()))
        );
    }

    /// Rows of two text columns and a number column, with NULLs and repeats, gathered on two
    /// threads (so each dictionary holds values twice): the packed sort and the gathered one give
    /// the same rows, which are the rows' distinct tuples in order (NULLs first, text by bytes);
    /// with too few bits the packed sort declines.
    #[tokio::test]
    async fn packed_and_gathered_sorts_agree() {
        use std::collections::BTreeSet;

        use datafusion::arrow::array::{Int64Array, StringArray};
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Utf8, true),
            Field::new("b", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
        ]));
        let mut state = 7u64;
        let mut next = move |m: u64| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) % m
        };
        let mut expected = BTreeSet::new();
        let mut input = Vec::new();
        for _ in 0..9 {
            let rows: Vec<(Option<String>, Option<String>, Option<i64>)> = (0..700)
                .map(|_| {
                    let a = (next(10) > 0).then(|| format!("acct{}", next(120)));
                    let b = (next(20) > 0).then(|| format!("g{}", next(30)));
                    let n = (next(4) > 0).then(|| next(3) as i64 - 1);
                    (a, b, n)
                })
                .collect();
            expected.extend(rows.iter().cloned());
            input.push(
                RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![
                        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.0.clone()))),
                        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.1.clone()))),
                        Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.2))),
                    ],
                )
                .unwrap(),
            );
        }
        let encoded = encoded_schema(&schema);
        let mut g = Gatherers::new(&encoded, 2);
        for b in &input {
            g.push(b.clone()).await.unwrap();
        }
        let columns = g.finish().unwrap();
        let decoded =
            |out: Vec<RecordBatch>| -> Vec<(Option<String>, Option<String>, Option<i64>)> {
                let all = concat_batches(
                    &schema,
                    &out.iter()
                        .map(|b| crate::engine::cast_batch(b, &schema).unwrap())
                        .collect::<Vec<_>>(),
                )
                .unwrap();
                let a = datafusion::arrow::array::as_string_array(all.column(0));
                let b = datafusion::arrow::array::as_string_array(all.column(1));
                let n = all.column(2).as_any().downcast_ref::<Int64Array>().unwrap();
                (0..all.num_rows())
                    .map(|i| {
                        (
                            a.is_valid(i).then(|| a.value(i).to_string()),
                            b.is_valid(i).then(|| b.value(i).to_string()),
                            n.is_valid(i).then(|| n.value(i)),
                        )
                    })
                    .collect()
            };
        let ranked = side_by_side(columns.iter(), dense_ranks).unwrap();
        let packed = sort_packed(&encoded, &ranked, 100, 64).unwrap().unwrap();
        assert!(packed.iter().all(|b| b.num_rows() <= 100));
        let gathered = sort_gathered(&encoded, columns.clone(), &ranked, 100).unwrap();
        let expected: Vec<_> = expected.into_iter().collect();
        assert!(expected.len() > 1000, "repeats and distinct rows both");
        assert_eq!(decoded(packed), expected);
        assert_eq!(decoded(gathered), expected);
        assert!(sort_packed(&encoded, &ranked, 100, 12).unwrap().is_none());
    }

    #[test]
    fn dedupe_drops_repeats_within_and_across_batches() {
        let input = [
            batch(&[(None, "x"), (None, "x"), (Some("a"), "x"), (Some("a"), "y")]),
            batch(&[]),
            // Repeats the last row of the first batch, then one new row, then a repeat.
            batch(&[(Some("a"), "y"), (Some("a"), "y")]),
            batch(&[(Some("a"), "y"), (Some("b"), "y"), (Some("b"), "y")]),
        ];
        let mut dedupe = Dedupe::default();
        let out: Vec<RecordBatch> = input
            .iter()
            .filter_map(|b| dedupe.push(b).unwrap())
            .collect();
        let all = datafusion::arrow::compute::concat_batches(&input[0].schema(), &out).unwrap();
        assert_eq!(
            all,
            batch(&[
                (None, "x"),
                (Some("a"), "x"),
                (Some("a"), "y"),
                (Some("b"), "y")
            ])
        );
        assert!(out.iter().all(|b| b.num_rows() > 0), "no empty batches");
    }

    #[tokio::test]
    async fn sorted_runs_are_merged_when_the_pool_is_short() {
        use datafusion::execution::runtime_env::RuntimeEnvBuilder;
        // 60 batches of 5,000 rows over 7 × 11 distinct pairs: repeats within and across
        // batches, and more rows than one run holds at least (a slice's).
        let pairs: Vec<(Option<String>, String)> = (0..300_000u64)
            .map(|i| {
                let h = i.wrapping_mul(2_654_435_761) % 1009;
                let a = (h % 7 != 0).then(|| format!("a{}", h % 7));
                (a, format!("b{}", (h / 7) % 11))
            })
            .collect();
        let input: Vec<RecordBatch> = pairs
            .chunks(5000)
            .map(|c| {
                batch(
                    &c.iter()
                        .map(|(a, b)| (a.as_deref(), b.as_str()))
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        let schema = input[0].schema();
        let expected = sort_unique(&schema, input.clone(), 1000).unwrap();
        let expected = datafusion::arrow::compute::concat_batches(&schema, &expected).unwrap();
        assert_eq!(expected.num_rows(), 7 * 11);
        // Unlimited, everything is sorted in memory; in 2 MB the gathering is refused part-way
        // and goes to disk a slice's rows or more at a time.
        for (limit, threads) in [(usize::MAX / 4, 1), (2 << 20, 1), (2 << 20, 2)] {
            let runtime = RuntimeEnvBuilder::new()
                .with_memory_limit(limit, 1.0)
                .build_arc()
                .unwrap();
            let ctx = SessionContext::new_with_config_rt(Default::default(), runtime);
            let df = ctx
                .read_table(super::super::mem_table(schema.clone(), input.clone()).unwrap())
                .unwrap();
            let (stored, out, runs) = sorted_distinct_runs(&ctx, df, threads).await.unwrap();
            let case = format!("pool of {limit} bytes, {threads} threads");
            if limit == usize::MAX / 4 {
                assert_eq!(runs, 0, "{case}");
            } else {
                assert!(
                    (2..=300_000usize.div_ceil(super::super::SLICE_ROWS)).contains(&runs),
                    "{case}: {runs} runs"
                );
            }
            // Dictionary-encoded either way, as the returned schema says.
            assert_eq!(stored, encoded_schema(&schema), "{case}");
            assert!(out.iter().all(|b| b.schema() == stored), "{case}");
            assert!(
                out.iter().all(|b| b.num_rows() > 0),
                "{case}: no empty batches"
            );
            let out: Vec<RecordBatch> = out
                .iter()
                .map(|b| super::super::cast_batch(b, &schema).unwrap())
                .collect();
            let all = datafusion::arrow::compute::concat_batches(&schema, &out).unwrap();
            assert_eq!(all.columns(), expected.columns(), "{case}");
        }
    }

    /// `batches` as the stored rows of a table, streamed in order.
    async fn stored_stream(
        batches: Vec<RecordBatch>,
    ) -> datafusion::physical_plan::SendableRecordBatchStream {
        let ctx = crate::engine::context();
        let schema = batches[0].schema();
        let df = ctx
            .read_table(super::super::mem_table(schema, batches).unwrap())
            .unwrap();
        stream_in_order(&ctx, df).await.unwrap()
    }

    fn member_pairs(range: impl Iterator<Item = u64>) -> Vec<(String, String)> {
        range
            .map(|i| (format!("cn=u{},dc=x", i / 13), format!("g{}", i % 13)))
            .collect()
    }

    fn batches_of(pairs: &[(String, String)], rows: usize) -> Vec<RecordBatch> {
        pairs
            .chunks(rows)
            .map(|c| {
                batch(
                    &c.iter()
                        .map(|(a, b)| (Some(a.as_str()), b.as_str()))
                        .collect::<Vec<_>>(),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn a_merge_of_sorted_sides_finds_the_rows_of_one_side_only() {
        // 60K pairs each side (windows and batch ends fall inside equal stretches), about 1%
        // of them on one side only: single rows, a run of 300, and each side's last.
        let all = member_pairs(0..60_500);
        let desired_only = |i: usize| i % 97 == 5 || (20_000..20_300).contains(&i) || i == 60_499;
        let stored_only = |i: usize| i % 89 == 7 || i == 60_498;
        // The pairs whose index `keep` accepts.
        let pick = |keep: &dyn Fn(usize) -> bool| -> Vec<(String, String)> {
            all.iter()
                .enumerate()
                .filter(|(i, _)| keep(*i))
                .map(|(_, p)| p.clone())
                .collect()
        };
        let desired = pick(&|i| !stored_only(i));
        let stored = pick(&|i| !desired_only(i));
        let schema = batch(&[]).schema();
        let sorted = |rows: Vec<(String, String)>, n: usize| {
            sort_unique_encoded(&schema, batches_of(&rows, 1000), n)
                .unwrap()
                .1
        };
        // The desired pairs dictionary-encoded (as sorted in memory), the stored plain.
        let desired = sorted(desired, 7_000);
        let stored: Vec<RecordBatch> = sorted(stored, 5_000)
            .iter()
            .map(|b| super::super::cast_batch(b, &schema).unwrap())
            .collect();
        let (added, removed) =
            sorted_difference(&schema, &desired, stored_stream(stored.clone()).await)
                .await
                .unwrap()
                .expect("both sides sorted");
        let expect = |only: &dyn Fn(usize) -> bool| {
            let mut rows = pick(only);
            rows.sort();
            rows
        };
        let rows = |batches: &[RecordBatch]| {
            let all = datafusion::arrow::compute::concat_batches(&schema, batches).unwrap();
            let (a, b) = (
                datafusion::arrow::array::AsArray::as_string::<i32>(all.column(0)),
                datafusion::arrow::array::AsArray::as_string::<i32>(all.column(1)),
            );
            (0..all.num_rows())
                .map(|i| (a.value(i).to_string(), b.value(i).to_string()))
                .collect::<Vec<_>>()
        };
        // An index on both lists is on neither side.
        let (added, removed) = (rows(&added), rows(&removed));
        let added_expected = expect(&|i| desired_only(i) && !stored_only(i));
        let removed_expected = expect(&|i| stored_only(i) && !desired_only(i));
        assert!(
            added == added_expected,
            "added: {} rows, {} expected",
            added.len(),
            added_expected.len()
        );
        assert!(
            removed == removed_expected,
            "removed: {} rows, {} expected",
            removed.len(),
            removed_expected.len()
        );
        assert!(added.len() > 900 && removed.len() > 600);

        // Stored rows out of order, repeated or NULL: not a merge.
        let mut swapped = stored.clone();
        swapped.swap(1, 2);
        let mut repeated = stored.clone();
        repeated.insert(3, stored[2].slice(stored[2].num_rows() - 1, 1));
        let mut nulls = stored.clone();
        nulls.push(batch(&[(None, "zz")]));
        for (what, s) in [
            ("swapped", swapped),
            ("repeated", repeated),
            ("null", nulls),
        ] {
            let out = sorted_difference(&schema, &desired, stored_stream(s).await)
                .await
                .unwrap();
            assert!(out.is_none(), "{what}");
        }
    }

    /// Sorted in memory, the strings come as dictionaries; a frame over them with the plain
    /// schema reads them back as text, and the store writes them as text.
    #[tokio::test]
    async fn encoded_rows_read_and_write_as_text() {
        let input = vec![
            batch(&[(Some("b"), "y"), (None, "x"), (Some("a"), "y")]),
            batch(&[(Some("b"), "y"), (Some("a"), "x")]),
        ];
        let schema = input[0].schema();
        let ctx = crate::engine::context();
        let df = ctx
            .read_table(super::super::mem_table(schema.clone(), input).unwrap())
            .unwrap();
        let (encoded, out) = sorted_distinct(&ctx, df).await.unwrap();
        assert!(matches!(
            encoded.field(0).data_type(),
            DataType::Dictionary(_, _)
        ));
        let plain = decoded_schema(&encoded);
        assert_eq!(plain.field(0).data_type(), &DataType::Utf8);
        let expected = vec![
            (None, "x".to_string()),
            (Some("a".to_string()), "x".to_string()),
            (Some("a".to_string()), "y".to_string()),
            (Some("b".to_string()), "y".to_string()),
        ];
        let read = crate::tasks::frames::frame(&ctx, &plain, &out)
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(read[0].schema().field(1).data_type(), &DataType::Utf8);
        assert_eq!(pairs(&read), expected);

        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path().to_str().unwrap()).unwrap();
        let catalog = store.catalog().await.unwrap();
        store
            .write_table(
                &catalog,
                "t",
                plain.clone(),
                out,
                crate::store::WriteMode::Overwrite,
                "run",
            )
            .await
            .unwrap();
        let table = store.delta_latest("t").await.unwrap();
        let ctx = crate::engine::context();
        let provider = table.table_provider().await.unwrap();
        assert!(
            provider
                .schema()
                .fields()
                .iter()
                .all(|f| !matches!(f.data_type(), DataType::Dictionary(_, _))),
            "stored as text"
        );
        let written = ctx
            .read_table(provider)
            .unwrap()
            .sort(vec![
                ident("a").sort(true, true),
                ident("b").sort(true, true),
            ])
            .unwrap()
            .collect()
            .await
            .unwrap();
        let written: Vec<RecordBatch> = written
            .iter()
            .map(|b| super::super::cast_batch(b, &plain).unwrap())
            .collect();
        assert_eq!(pairs(&written), expected);
    }

    #[test]
    fn three_columns_sort_like_order_by_all_of_them() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Utf8, true),
            Field::new("b", DataType::Int64, true),
            Field::new("c", DataType::Utf8View, true),
        ]));
        let make = |a: Vec<Option<&str>>, b: Vec<Option<i64>>, c: Vec<Option<&str>>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(a)),
                    Arc::new(datafusion::arrow::array::Int64Array::from(b)),
                    Arc::new(datafusion::arrow::array::StringViewArray::from(c)),
                ],
            )
            .unwrap()
        };
        let input = vec![make(
            vec![Some("x"), Some("x"), Some("x"), None, Some("x"), Some("w")],
            vec![Some(2), Some(1), Some(2), Some(5), Some(2), None],
            vec![Some("q"), Some("z"), None, Some("a"), Some("q"), Some("a")],
        )];
        let out = sort_unique(&schema, input, 100).unwrap();
        let expected = make(
            vec![None, Some("w"), Some("x"), Some("x"), Some("x")],
            vec![Some(5), None, Some(1), Some(2), Some(2)],
            vec![Some("a"), Some("a"), Some("z"), None, Some("q")],
        );
        assert_eq!(out, vec![expected]);
    }

    /// Rows as (a, b) text pairs, for comparing outputs.
    fn pairs(batches: &[RecordBatch]) -> Vec<(Option<String>, String)> {
        let mut out = Vec::new();
        for b in batches {
            let a = datafusion::arrow::array::as_string_array(b.column(0));
            let c = datafusion::arrow::array::as_string_array(b.column(1));
            for i in 0..b.num_rows() {
                out.push((
                    a.is_valid(i).then(|| a.value(i).to_string()),
                    c.value(i).to_string(),
                ));
            }
        }
        out
    }

    #[test]
    fn splice_places_new_rows_between_the_kept_ones() {
        let schema = batch(&[]).schema();
        let kept = vec![
            batch(&[(None, "a"), (Some("b"), "b"), (Some("d"), "a")]),
            batch(&[]),
            batch(&[(Some("d"), "c"), (Some("f"), "a")]),
        ];
        // Before all, inside the first batch, where two batches meet, and after all.
        let new = vec![
            batch(&[(None, "0"), (Some("c"), "z"), (Some("d"), "b")]),
            batch(&[(Some("g"), "a"), (Some("h"), "a")]),
        ];
        let out = splice(&schema, &kept, &new, &["a", "b"]).unwrap().unwrap();
        let mut expected = pairs(&kept);
        expected.extend(pairs(&new));
        expected.sort();
        assert_eq!(pairs(&out), expected);
        // No new rows: the kept batches as they are; no kept rows: the new ones.
        let out = splice(&schema, &kept, &[], &["a", "b"]).unwrap().unwrap();
        assert_eq!(pairs(&out), pairs(&kept));
        let out = splice(&schema, &[], &new, &["a", "b"]).unwrap().unwrap();
        assert_eq!(pairs(&out), pairs(&new));
    }

    #[test]
    fn splice_refuses_kept_rows_out_of_order_between_batches() {
        let schema = batch(&[]).schema();
        let kept = vec![batch(&[(Some("b"), "a")]), batch(&[(Some("a"), "a")])];
        let new = vec![batch(&[(Some("c"), "a")])];
        assert!(splice(&schema, &kept, &new, &["a", "b"]).unwrap().is_none());
    }

    #[tokio::test]
    async fn collect_in_order_keeps_a_stored_order() {
        // One in-memory partition of many batches: a plain collect reads it in two
        // partitions and interleaves them.
        let rows: Vec<(Option<String>, String)> = (0..20_000)
            .map(|i| (Some(format!("{i:06}")), "x".to_string()))
            .collect();
        let batches: Vec<RecordBatch> = rows
            .chunks(1_000)
            .map(|c| {
                let c: Vec<(Option<&str>, &str)> =
                    c.iter().map(|(a, b)| (a.as_deref(), b.as_str())).collect();
                batch(&c)
            })
            .collect();
        let ctx = crate::engine::context();
        let table = crate::engine::mem_table(batches[0].schema(), batches).unwrap();
        let df = ctx.read_table(table).unwrap();
        let (_, out) = collect_in_order(&ctx, df).await.unwrap();
        assert_eq!(pairs(&out), rows);
    }

    /// Rows already in the column's order come back as read; a decrease within a batch, at a
    /// batch boundary, or a NULL gets them sorted by the column.
    #[tokio::test]
    async fn collect_ordered_by_sorts_only_rows_out_of_order() {
        let rows: Vec<(Option<String>, String)> = (0..6_000)
            .map(|i| (Some(format!("{i:05}")), format!("{}", 6_000 - i)))
            .collect();
        let chunks = |rows: &[(Option<String>, String)]| -> Vec<RecordBatch> {
            rows.chunks(1_000)
                .map(|c| {
                    let c: Vec<(Option<&str>, &str)> =
                        c.iter().map(|(a, b)| (a.as_deref(), b.as_str())).collect();
                    batch(&c)
                })
                .collect()
        };
        let ctx = crate::engine::context();
        let ordered = |batches: Vec<RecordBatch>| {
            let ctx = ctx.clone();
            async move {
                let table = crate::engine::mem_table(batches[0].schema(), batches).unwrap();
                let df = ctx.read_table(table).unwrap();
                pairs(&collect_ordered_by(&ctx, df, "a").await.unwrap().1)
            }
        };
        let mut sorted = rows.clone();
        sorted.sort();
        // In order: as read.
        assert_eq!(ordered(chunks(&rows)).await, rows);
        // Two batches swapped: each in order, the boundary not.
        let mut swapped = chunks(&rows);
        swapped.swap(2, 3);
        assert!(!ascending(&swapped, "a").unwrap());
        assert_eq!(ordered(swapped).await, sorted);
        // Two rows of one batch swapped.
        let mut inside = rows.clone();
        inside.swap(4_500, 4_501);
        assert!(!ascending(&chunks(&inside), "a").unwrap());
        assert_eq!(ordered(chunks(&inside)).await, sorted);
        // A NULL, first by the sort.
        let mut with_null = rows.clone();
        with_null[0].0 = None;
        let out = ordered(chunks(&with_null)).await;
        assert_eq!(out[0], (None, "6000".to_string()));
        assert_eq!(out[1..], with_null[1..]);
        // Equal neighbours are in order, but not strictly: within a batch or across one.
        let mut equal = rows.clone();
        equal[10].0 = equal[11].0.clone();
        assert!(ascending(&chunks(&equal), "a").unwrap());
        assert!(!strictly_ascending(&chunks(&equal), "a").unwrap());
        let mut across = rows.clone();
        across[999].0 = across[1_000].0.clone();
        assert!(ascending(&chunks(&across), "a").unwrap());
        assert!(!strictly_ascending(&chunks(&across), "a").unwrap());
        assert!(strictly_ascending(&chunks(&rows), "a").unwrap());
        assert!(!strictly_ascending(&chunks(&with_null), "a").unwrap());
        assert!(!strictly_ascending(&chunks(&inside), "a").unwrap());
    }
}

/// The rows only in `desired` (added) and the rows only in `stored` (removed), both sides
/// sorted on all their columns (ascending, strings by their bytes, as [`sorted_distinct`]
/// gives them and a table written from it is stored) and each row once: a merge of the two
/// sequences, `stored` streamed. A synchronization's 13.6M membership pairs against the
/// 13.6M stored ones took two hash joins, each holding one side whole in its table (9 s and
/// the task's memory peak at 1M identities). Equal stretches are compared a window of
/// columns at a time; rows are stepped one by one only around a difference. `None` when a
/// side holds a NULL or `stored` turns out not to be strictly sorted: the caller then
/// compares the sets otherwise.
///
/// `desired` may be dictionary-encoded; the rows of both sides come as `schema` (plain).
pub async fn sorted_difference(
    schema: &SchemaRef,
    desired: &[RecordBatch],
    mut stored: datafusion::physical_plan::SendableRecordBatchStream,
) -> Result<Option<(Vec<RecordBatch>, Vec<RecordBatch>)>> {
    let mut merge = Merge::default();
    let mut desired = desired.iter().filter(|b| b.num_rows() > 0);
    let mut d: Option<Side> = None;
    let mut c: Option<Side> = None;
    let mut stored_done = false;
    loop {
        if d.as_ref().is_none_or(Side::done) {
            if let Some(old) = d.take() {
                merge.added.extend(old.flush()?);
            }
            match desired.next() {
                Some(b) => {
                    let b = super::cast_batch(b, schema)?;
                    if b.columns().iter().any(|a| a.null_count() > 0) {
                        return Ok(None);
                    }
                    d = Some(Side::new(b));
                }
                None => break,
            }
        }
        if c.as_ref().is_none_or(Side::done) {
            let last = match c.take() {
                Some(old) => {
                    let last = old.batch.slice(old.batch.num_rows() - 1, 1);
                    merge.removed.extend(old.flush()?);
                    Some(last)
                }
                None => None,
            };
            match next_nonempty(&mut stored, schema).await? {
                Some(b) if strictly_sorted(last.as_ref(), &b)? => c = Some(Side::new(b)),
                Some(_) => return Ok(None),
                None => {
                    stored_done = true;
                    break;
                }
            }
        }
        let (dd, cc) = (d.as_mut().expect("loaded"), c.as_mut().expect("loaded"));
        if !merge.step(dd, cc)? {
            return Ok(None);
        }
    }
    // What one side has beyond the other's end.
    if let Some(mut dd) = d {
        dd.take_rest();
        merge.added.extend(dd.flush()?);
    }
    for b in desired {
        merge.added.push(super::cast_batch(b, schema)?);
    }
    if !stored_done {
        let mut last = None;
        if let Some(mut cc) = c {
            last = Some(cc.batch.slice(cc.batch.num_rows() - 1, 1));
            cc.take_rest();
            merge.removed.extend(cc.flush()?);
        }
        while let Some(b) = next_nonempty(&mut stored, schema).await? {
            if !strictly_sorted(last.as_ref(), &b)? {
                return Ok(None);
            }
            last = Some(b.slice(b.num_rows() - 1, 1));
            merge.removed.push(b);
        }
    }
    Ok(Some((merge.added, merge.removed)))
}

/// The next batch of `stream` with rows, as `schema`.
async fn next_nonempty(
    stream: &mut datafusion::physical_plan::SendableRecordBatchStream,
    schema: &SchemaRef,
) -> Result<Option<RecordBatch>> {
    while let Some(b) = stream.next().await {
        let b = b?;
        if b.num_rows() > 0 {
            return Ok(Some(super::cast_batch(&b, schema)?));
        }
    }
    Ok(None)
}

/// Whether the rows of `b` have no NULL and each sorts strictly after the one before it
/// (`last`, the row before the batch, included), on all columns in order.
fn strictly_sorted(last: Option<&RecordBatch>, b: &RecordBatch) -> Result<bool> {
    if b.columns().iter().any(|a| a.null_count() > 0) {
        return Ok(false);
    }
    if let Some(l) = last {
        let comparators = l
            .columns()
            .iter()
            .zip(b.columns())
            .map(|(x, y)| make_comparator(x, y, SortOptions::default()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let order = comparators
            .iter()
            .map(|f| f(l.num_rows() - 1, 0))
            .find(|o| o.is_ne());
        if order != Some(std::cmp::Ordering::Less) {
            return Ok(false);
        }
    }
    let n = b.num_rows();
    if n < 2 {
        return Ok(true);
    }
    // Row i+1 after row i: greater on a column, the columns before it equal.
    let mut after: Option<BooleanArray> = None;
    let mut equal_so_far: Option<BooleanArray> = None;
    for a in b.columns() {
        let (prev, next) = (a.slice(0, n - 1), a.slice(1, n - 1));
        let gt = cmp::gt(&next, &prev)?;
        let eq = cmp::eq(&next, &prev)?;
        let (g, e) = match (after, equal_so_far) {
            (Some(after), Some(so_far)) => (
                boolean::or(&after, &boolean::and(&so_far, &gt)?)?,
                boolean::and(&so_far, &eq)?,
            ),
            _ => (gt, eq),
        };
        after = Some(g);
        equal_so_far = Some(e);
    }
    Ok(after.is_some_and(|a| a.true_count() == n - 1))
}

/// One side of [`sorted_difference`]: a batch, the next row to compare and the rows found
/// only on this side.
struct Side {
    batch: RecordBatch,
    at: usize,
    only: Vec<u32>,
}

impl Side {
    fn new(batch: RecordBatch) -> Self {
        Self {
            batch,
            at: 0,
            only: Vec::new(),
        }
    }

    fn done(&self) -> bool {
        self.at == self.batch.num_rows()
    }

    fn left(&self) -> usize {
        self.batch.num_rows() - self.at
    }

    /// The rows not compared yet are found only on this side.
    fn take_rest(&mut self) {
        self.only
            .extend(self.at as u32..self.batch.num_rows() as u32);
        self.at = self.batch.num_rows();
    }

    /// The rows found only on this side, as one batch (none without any).
    fn flush(self) -> Result<Option<RecordBatch>> {
        if self.only.is_empty() {
            return Ok(None);
        }
        if self.only.len() == self.batch.num_rows() {
            return Ok(Some(self.batch));
        }
        let indices = datafusion::arrow::array::UInt32Array::from(self.only);
        Ok(Some(datafusion::arrow::compute::take_record_batch(
            &self.batch,
            &indices,
        )?))
    }
}

/// The rows found only on each side so far, and whether the last rows compared were equal
/// (then the next ones are compared a window at a time).
#[derive(Default)]
struct Merge {
    added: Vec<RecordBatch>,
    removed: Vec<RecordBatch>,
    stepping: bool,
    /// Rows to compare at once next: doubled after each window found equal, back to the
    /// least after a difference (a window costs its rows whatever it finds, and a day's
    /// changes come about every 50 rows).
    window: usize,
}

/// The fewest and the most rows compared at once while the sides agree.
const WINDOW: (usize, usize) = (32, 8192);

impl Merge {
    /// Compares rows of `d` and `c` until one of them is done; `false` if the columns cannot
    /// be compared.
    fn step(&mut self, d: &mut Side, c: &mut Side) -> Result<bool> {
        let options = SortOptions {
            descending: false,
            nulls_first: true,
        };
        let comparators = d
            .batch
            .columns()
            .iter()
            .zip(c.batch.columns())
            .map(|(a, b)| make_comparator(a, b, options))
            .collect::<std::result::Result<Vec<_>, _>>();
        let Ok(comparators) = comparators else {
            return Ok(false);
        };
        while !d.done() && !c.done() {
            if self.stepping {
                let order = comparators
                    .iter()
                    .map(|f| f(d.at, c.at))
                    .find(|o| o.is_ne())
                    .unwrap_or(std::cmp::Ordering::Equal);
                match order {
                    std::cmp::Ordering::Less => {
                        d.only.push(d.at as u32);
                        d.at += 1;
                    }
                    std::cmp::Ordering::Greater => {
                        c.only.push(c.at as u32);
                        c.at += 1;
                    }
                    std::cmp::Ordering::Equal => {
                        d.at += 1;
                        c.at += 1;
                        self.stepping = false;
                    }
                }
                continue;
            }
            // Equal rows up to the first difference of a window.
            let n = d.left().min(c.left()).min(self.window.max(WINDOW.0));
            let mut differs: Option<BooleanArray> = None;
            for (a, b) in d.batch.columns().iter().zip(c.batch.columns()) {
                let x = cmp::distinct(&a.slice(d.at, n), &b.slice(c.at, n))?;
                differs = Some(match differs {
                    None => x,
                    Some(y) => boolean::or(&x, &y)?,
                });
            }
            let same = differs
                .and_then(|x| x.values().set_indices().next())
                .unwrap_or(n);
            d.at += same;
            c.at += same;
            if same < n {
                self.stepping = true;
                self.window = WINDOW.0;
            } else {
                self.window = (self.window * 2).clamp(WINDOW.0, WINDOW.1);
            }
        }
        Ok(true)
    }
}
