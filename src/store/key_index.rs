//! Key indexes: for a data file of a table and one of its text columns, where each value's rows
//! are, so that a key lookup ([`super::Store::rows_of_keys`]) or a patch's
//! ([`super::Store::find_replaced`], on the index of its last key column) finds a few thousand
//! keys' rows without decoding the column's million values: the lookup reads the rows the
//! index points to and keeps those of its keys; the patch reads only those rows' key columns.
//!
//! An index is written beside the store's tables, under `_igaflow/keys/<table>/`, named after
//! its data file and column (`<data file>.<column>.idx`): a data file never changes, so its
//! index holds as long as the file does, whatever the table's later versions. It is built from
//! the rows as the table is written whole in one file (a complete run's tables), and is only a
//! shortcut: a file without one (a patch's few rows, a file another writer made, an index lost)
//! is read as before, and the rows an index points to are still compared with the keys.
//!
//! Format (little-endian): `IGAKEY01`, the file's row count (u64), the number of entries (u64),
//! then one entry per run of equal values in the file's row order: the value's 64-bit xxHash
//! (seed 0), the run's first row (u32) and its length (u32), sorted by hash then row. NULLs are
//! left out (they equal no key).

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use roaring::RoaringTreemap;

const MAGIC: &[u8; 8] = b"IGAKEY01";
const HEADER: usize = 24;
const ENTRY: usize = 16;

/// Where the index of column `column` of data file `file` (a path under the store's objects)
/// of table `name` lives.
pub(super) fn path_of(
    store: &super::Store,
    name: &str,
    file: &object_store::path::Path,
    column: &str,
) -> object_store::path::Path {
    let file_name = file.filename().unwrap_or_default();
    store.object_path(&format!("_igaflow/keys/{name}/{file_name}.{column}.idx"))
}

fn hash(v: &[u8]) -> u64 {
    twox_hash::XxHash64::oneshot(0, v)
}

/// The index of column `column` over `batches` (the rows of one data file, in order); `None`
/// when the column is not text or the file too long for 32-bit row numbers.
pub(super) fn build(batches: &[RecordBatch], column: &str) -> Option<Vec<u8>> {
    let mut entries: Vec<(u64, u32, u32)> = Vec::new();
    let mut at: u64 = 0;
    // The value of the run being extended (the last entry's), if the row before was one.
    let (mut last, mut open) = (Vec::new(), false);
    for b in batches {
        let c = b.column_by_name(column)?;
        if !crate::engine::is_text(c.data_type())
            && !matches!(c.data_type(), DataType::Dictionary(_, v) if crate::engine::is_text(v))
        {
            return None;
        }
        let c = cast(c, &DataType::Utf8View).ok()?;
        let c = c.as_string_view();
        for i in 0..c.len() {
            let p = u32::try_from(at + i as u64).ok()?;
            if c.is_null(i) {
                open = false;
                continue;
            }
            let v = c.value(i).as_bytes();
            match entries.last_mut() {
                Some(e) if open && last == v => e.2 += 1,
                _ => {
                    entries.push((hash(v), p, 1));
                    last.clear();
                    last.extend_from_slice(v);
                    open = true;
                }
            }
        }
        at += c.len() as u64;
    }
    u32::try_from(at).ok()?;
    entries.sort_unstable();
    let mut out = Vec::with_capacity(HEADER + entries.len() * ENTRY);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&at.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (h, start, len) in entries {
        out.extend_from_slice(&h.to_le_bytes());
        out.extend_from_slice(&start.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
    }
    Some(out)
}

/// A loaded index.
#[derive(Debug)]
pub(super) struct KeyIndex {
    rows: u64,
    bytes: bytes::Bytes,
}

impl KeyIndex {
    /// The index in `bytes`, if they are one (of a file of `rows` rows).
    pub(super) fn parse(bytes: bytes::Bytes, rows: u64) -> Option<Arc<Self>> {
        let head = bytes.get(..HEADER)?;
        let n = u64::from_le_bytes(head[16..24].try_into().ok()?);
        let stored_rows = u64::from_le_bytes(head[8..16].try_into().ok()?);
        let whole = (HEADER as u64).checked_add(n.checked_mul(ENTRY as u64)?)?;
        (&head[..8] == MAGIC && stored_rows == rows && whole == bytes.len() as u64)
            .then(|| Arc::new(Self { rows, bytes }))
    }

    fn len(&self) -> usize {
        (self.bytes.len() - HEADER) / ENTRY
    }

    fn entry(&self, i: usize) -> (u64, u32, u32) {
        let e = &self.bytes[HEADER + i * ENTRY..HEADER + (i + 1) * ENTRY];
        (
            u64::from_le_bytes(e[..8].try_into().expect("eight bytes")),
            u32::from_le_bytes(e[8..12].try_into().expect("four bytes")),
            u32::from_le_bytes(e[12..16].try_into().expect("four bytes")),
        )
    }

    /// The rows whose value may be one of `values` (its hash is a value's): every row of
    /// each value, and now and then a row of another value with the same hash.
    pub(super) fn rows_of(&self, values: &[Vec<u8>]) -> RoaringTreemap {
        let mut rows = RoaringTreemap::new();
        let n = self.len();
        for v in values {
            let h = hash(v);
            // The first entry whose hash is not below `h`.
            let (mut lo, mut hi) = (0, n);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if self.entry(mid).0 < h {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            while lo < n {
                let (eh, start, len) = self.entry(lo);
                if eh != h {
                    break;
                }
                rows.insert_range(start as u64..start as u64 + len as u64);
                lo += 1;
            }
        }
        debug_assert!(rows.max().is_none_or(|m| m < self.rows));
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::StringArray;
    use datafusion::arrow::datatypes::{Field, Schema};

    fn batch(values: &[Option<&str>]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, true)]));
        RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(values.to_vec()))]).unwrap()
    }

    #[test]
    fn an_index_finds_every_row_of_each_value_across_batches() {
        // Runs that cross a batch, values out of order and repeated apart, NULLs.
        let batches = [
            batch(&[Some("b"), Some("b"), None, Some("a")]),
            batch(&[Some("a"), Some("c"), Some("b"), None]),
            batch(&[]),
            batch(&[Some("a long value of more than twelve bytes"), Some("c")]),
        ];
        let bytes = build(&batches, "k").expect("a text column");
        let index = KeyIndex::parse(bytes.into(), 10).expect("10 rows");
        let rows = |vs: &[&str]| -> Vec<u64> {
            let vs: Vec<Vec<u8>> = vs.iter().map(|v| v.as_bytes().to_vec()).collect();
            index.rows_of(&vs).iter().collect()
        };
        assert_eq!(rows(&["a"]), vec![3, 4]);
        assert_eq!(rows(&["b"]), vec![0, 1, 6]);
        assert_eq!(rows(&["c", "x"]), vec![5, 9]);
        assert_eq!(rows(&["a long value of more than twelve bytes"]), vec![8]);
        assert!(rows(&["", "d"]).is_empty());
        // Runs are entries: b b | a a (across the batches) | c | b | long | c.
        assert_eq!(index.len(), 6);
    }

    #[test]
    fn an_index_of_another_file_or_damaged_is_not_used() {
        let bytes: bytes::Bytes = build(&[batch(&[Some("a"), Some("b")])], "k")
            .unwrap()
            .into();
        assert!(KeyIndex::parse(bytes.clone(), 2).is_some());
        assert!(KeyIndex::parse(bytes.clone(), 3).is_none(), "row count");
        assert!(KeyIndex::parse(bytes.slice(..bytes.len() - 1), 2).is_none());
        assert!(build(&[batch(&[Some("a")])], "other").is_none());
    }
}
