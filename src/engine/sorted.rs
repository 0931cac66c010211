//! Kernels over sorted rows. `DISTINCT` is a hash aggregate: for 13M link pairs it builds a
//! hash table as large as its input, then the rows are sorted anyway. Sorting first and
//! dropping each row equal to the one before gives the same set, in order, without the table.

use datafusion::arrow::array::{BooleanArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::compute::kernels::{boolean, cmp};
use datafusion::common::Result;

/// The rows of `batches` (sorted on all their columns, so equal rows are adjacent) without
/// repeats: a row is kept when it differs from the row before it (NULLs equal each other).
pub fn dedupe_sorted(batches: &[RecordBatch]) -> Result<Vec<RecordBatch>> {
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
    fn drops_repeats_within_and_across_batches() {
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
}
