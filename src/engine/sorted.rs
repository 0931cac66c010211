//! Sorting rows on all their columns and dropping repeats (the link pairs of a
//! synchronization, `assigned_links`). `DISTINCT` is a hash aggregate: for 13M pairs it builds
//! a hash table as large as its input, and the rows are sorted anyway. A DataFusion sort of 13M
//! string pairs holds the input, each sorted batch, the row-format keys of its merge and the
//! output at once (4.4 GB at 1M identities). [`sort_unique`] ranks each column once (equal
//! values share a rank), orders the rows by their packed ranks and gathers the columns once:
//! the strings are held twice at most (input and output).

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, DictionaryArray, RecordBatch, UInt64Array,
};
use datafusion::arrow::compute::kernels::{boolean, cmp, numeric, zip::zip};
use datafusion::arrow::compute::{
    cast, concat, filter, filter_record_batch, is_not_null, rank, sort_to_indices, take,
};
use datafusion::arrow::datatypes::{DataType, SchemaRef, UInt32Type};
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::prelude::{DataFrame, SessionContext, ident};

/// The rows of `df`, sorted on all its columns in order (ascending, NULLs first) and each
/// distinct row once, in batches of [`super::SLICE_ROWS`] rows. The rows are collected first.
/// Sorting them in memory ([`sort_unique`]) needs about twice their size again, which is
/// reserved in the session's memory pool; when the pool cannot spare it (a small
/// `--memory-limit`), DataFusion's sort, which spills, orders them and the repeats are dropped
/// after it ([`dedupe_sorted`]).
pub async fn sorted_distinct(
    ctx: &SessionContext,
    df: DataFrame,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await?;
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let mut bytes = 0;
    for b in &batches {
        for c in b.columns() {
            bytes += c.to_data().get_slice_memory_size()?;
        }
    }
    let reservation = MemoryConsumer::new("sort_unique").register(&ctx.runtime_env().memory_pool);
    if reservation.try_grow(2 * bytes + 48 * rows).is_ok() {
        let s = Arc::clone(&schema);
        let sorted =
            tokio::task::spawn_blocking(move || sort_unique(&s, batches, super::SLICE_ROWS))
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))??;
        return Ok((schema, sorted));
    }
    drop(reservation);
    let order = schema
        .fields()
        .iter()
        .map(|f| ident(f.name()).sort(true, true))
        .collect::<Vec<_>>();
    let sorted = ctx
        .read_table(super::mem_table(Arc::clone(&schema), batches)?)?
        .sort(order)?
        .collect()
        .await?;
    Ok((schema, dedupe_sorted(&sorted)?))
}

/// The rows of `batches`, sorted on all columns in order (ascending, NULLs first, strings by
/// their bytes: DataFusion's `ORDER BY` of the same columns), each distinct row once, in
/// batches of at most `batch_rows` rows.
fn sort_unique(
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
    batch_rows: usize,
) -> Result<Vec<RecordBatch>> {
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if rows == 0 {
        return Ok(Vec::new());
    }
    if u32::try_from(rows).is_err() {
        return Err(DataFusionError::Execution(format!(
            "{rows} rows are too many to sort in memory (at most {})",
            u32::MAX
        )));
    }
    let columns = (0..schema.fields().len())
        .map(|j| {
            concat(
                &batches
                    .iter()
                    .map(|b| b.column(j).as_ref())
                    .collect::<Vec<_>>(),
            )
        })
        .collect::<std::result::Result<Vec<ArrayRef>, _>>()?;
    drop(batches);
    // The ranks of all columns are computed side by side (a string sort each).
    let ranks = std::thread::scope(|s| {
        let handles: Vec<_> = columns
            .iter()
            .map(|c| s.spawn(move || column_rank(c)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a rank thread does not panic"))
            .collect::<Result<Vec<UInt64Array>>>()
    })?;
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
            Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
        })
        .collect()
}

/// Each value's rank in its column: 0 for NULL, 1.. for the distinct values in order. The
/// column is dictionary-encoded first (a hash pass), so only its distinct values are sorted.
fn column_rank(column: &ArrayRef) -> Result<UInt64Array> {
    let plain = match column.data_type() {
        DataType::Utf8View | DataType::LargeUtf8 => cast(column, &DataType::Utf8)?,
        DataType::BinaryView | DataType::LargeBinary => cast(column, &DataType::Binary)?,
        _ => Arc::clone(column),
    };
    let value_type = match plain.data_type() {
        DataType::Dictionary(_, v) => v.as_ref().clone(),
        other => other.clone(),
    };
    let encoded = cast(
        &plain,
        &DataType::Dictionary(Box::new(DataType::UInt32), Box::new(value_type)),
    )?;
    let encoded = encoded
        .as_any()
        .downcast_ref::<DictionaryArray<UInt32Type>>()
        .expect("cast to a u32 dictionary");
    let value_ranks = UInt64Array::from_iter_values(
        rank(encoded.values().as_ref(), None)?
            .into_iter()
            .map(|r| u64::from(r) + 1),
    );
    let ranks = take(&value_ranks, encoded.keys(), None)?;
    let valid = is_not_null(&ranks)?;
    let ranks = zip(&valid, &ranks, &UInt64Array::new_scalar(0))?;
    Ok(ranks
        .as_any()
        .downcast_ref::<UInt64Array>()
        .expect("u64 ranks")
        .clone())
}

/// The rows of `batches` (sorted on all their columns, so equal rows are adjacent) without
/// repeats: a row is kept when it differs from the row before it (NULLs equal each other).
fn dedupe_sorted(batches: &[RecordBatch]) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::with_capacity(batches.len());
    let mut previous: Option<RecordBatch> = None;
    for batch in batches.iter().filter(|b| b.num_rows() > 0) {
        let n = batch.num_rows();
        // Row 0 against the last row seen so far, rows 1.. each against the row before it.
        let mut first = previous.is_none();
        let mut rest = BooleanArray::from(vec![false; n - 1]);
        for (j, column) in batch.columns().iter().enumerate() {
            if let Some(p) = &previous {
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
        previous = Some(batch.slice(n - 1, 1));
        if kept.num_rows() > 0 {
            out.push(kept);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::StringArray;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

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

    #[test]
    fn dedupe_drops_repeats_within_and_across_batches() {
        let input = [
            batch(&[(None, "x"), (None, "x"), (Some("a"), "x"), (Some("a"), "y")]),
            batch(&[]),
            // Repeats the last row of the first batch, then one new row, then a repeat.
            batch(&[(Some("a"), "y"), (Some("a"), "y")]),
            batch(&[(Some("a"), "y"), (Some("b"), "y"), (Some("b"), "y")]),
        ];
        let out = dedupe_sorted(&input).unwrap();
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
}
