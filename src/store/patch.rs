//! Dirty replacements written as Delta deletion vectors (`[store] deletion_vectors = true`).
//!
//! A dirty task recomputes a few owners' rows of a large table (0.1% of the owners: a few
//! thousand rows of millions). Those rows lie in every data file, so rewriting the table means
//! reading and writing all of it. Instead, [`Store::find_replaced`] reads only the key columns
//! of each committed data file (with each row's position in its file), joins them with the
//! replaced keys in DataFusion, and reads back just the matching rows (a Parquet row
//! selection). [`Store::write_patch`] then commits the recomputed rows as one new data file and
//! each touched file again with a deletion vector marking its replaced rows: a Delta commit
//! whose size is that of the change, not of the table.
//!
//! The deletion vectors are inline (in the Delta log, Z85 of the portable Roaring bitmap), so a
//! table stays a folder of Parquet files and its log: nothing else to copy, compact or scrub.
//! Each patch unites the file's earlier deletion vector with the new positions. A complete run
//! (an overwrite) writes the table afresh, sorted, without deletion vectors.
//!
//! Opt-in, because a table with deletion vectors needs a reader that applies them: Python
//! `deltalake`'s pyarrow datasets (`to_pandas`) refuse it, where SPEC 10 promises pandas
//! readers. What it also gives up: a patched table is no longer stored in one key order (the recomputed
//! rows follow the kept ones). Nothing reads it in stored order but the splice of a dry run,
//! which sorts when the order does not hold. Deleted rows stay in their data files until the
//! next overwrite; anonymization's scrub reads every data file whole, so a personal value in a
//! deleted row still makes the table rewritten and its old files removed (SPEC 9).

use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, UInt32Array, UInt64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::common::JoinType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::{
    DefaultParquetFileReaderFactory, ParquetFileReaderFactory,
};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::parquet::arrow::arrow_reader::{RowSelection, RowSelector};
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::*;
use deltalake::kernel::transaction::CommitBuilder;
use deltalake::kernel::{Action, Add, DeletionVectorDescriptor, Remove, StorageType};
use deltalake::protocol::DeltaOperation;
use futures::{StreamExt, TryStreamExt};
use roaring::RoaringTreemap;

use super::{Catalog, Store, WriteMode};
use crate::error::{Error, Result};

/// Past this many data files, a table is rewritten rather than patched.
const MAX_FILES: usize = 64;
/// Past this share of deleted rows in its files (percent), a table is rewritten rather than
/// patched.
const MAX_DELETED_PCT: u64 = 20;

/// The magic number of a portable Roaring bitmap in a Delta deletion vector.
const PORTABLE_MAGIC: u32 = 1681511377;

/// The committed rows a dirty task replaces, as deletion vectors to write.
#[derive(Debug)]
pub struct Patch {
    /// The committed version the positions belong to.
    version: u64,
    /// The files holding replaced rows, with every row deleted once the patch is committed.
    touched: Vec<Touched>,
    /// Rows of the committed version (deleted ones not counted).
    committed_rows: u64,
    /// Rows the patch deletes.
    removed_rows: u64,
}

#[derive(Debug)]
struct Touched {
    add: Add,
    remove: Remove,
    deleted: RoaringTreemap,
}

impl Patch {
    /// Rows of the table once the patch and `added` new rows are committed.
    pub fn rows_after(&self, added: u64) -> u64 {
        self.committed_rows - self.removed_rows + added
    }
}

/// One committed data file: where it is and which of its rows are already deleted.
pub(super) struct DataFile {
    pub(super) path: object_store::path::Path,
    pub(super) size: u64,
    pub(super) deleted: RoaringTreemap,
}

/// An active data file of a table version, with its row count and Delta actions.
pub(super) struct ActiveFile {
    pub(super) file: DataFile,
    /// Rows stored in the file, deleted ones included.
    pub(super) records: u64,
    add: Add,
    remove: Remove,
}

/// The active data files of `table`, or `None` when one of them is partitioned, has no row
/// count, or has a deletion vector stored in a file of its own (written by another tool):
/// igaflow then leaves the table to delta-rs (reads) or rewrites it (patches).
pub(super) async fn active_files(
    store: &Store,
    name: &str,
    table: &deltalake::DeltaTable,
) -> Result<Option<Vec<ActiveFile>>> {
    let views: Vec<_> = table
        .get_active_add_actions_by_predicate(None)
        .try_collect()
        .await?;
    let mut files = Vec::with_capacity(views.len());
    for v in &views {
        #[allow(deprecated)] // the Add action is what a patch commits again
        let add = v.add_action();
        if add.partition_values.values().next().is_some() {
            return Ok(None);
        }
        let deleted = match &add.deletion_vector {
            None => RoaringTreemap::new(),
            Some(dv) if dv.storage_type == StorageType::Inline => {
                decode_inline(&dv.path_or_inline_dv)
                    .map_err(|e| Error::store(format!("table {name}: {}: {e}", add.path)))?
            }
            Some(_) => return Ok(None),
        };
        let Some(records) = v.num_records() else {
            return Ok(None);
        };
        files.push(ActiveFile {
            file: DataFile {
                path: store.object_path(&format!("{name}/{}", v.object_store_path())),
                size: v.size() as u64,
                deleted,
            },
            records: records as u64,
            remove: v.remove_action(true),
            add,
        });
    }
    Ok(Some(files))
}

impl Store {
    /// The rows of table `name` at committed `version` whose columns `on` equal a row of
    /// `keys` (column by column, NULL equal to nothing), as a [`Patch`] deleting them and the
    /// rows themselves in `schema` (by name). `None` when the table is to be rewritten instead:
    /// other columns or types than `schema`'s, a deletion vector in a file of its own (written
    /// by another tool), a file without a row count, a partitioned table, or a table that
    /// patches have left with more than [`MAX_FILES`] files or [`MAX_DELETED_PCT`]% deleted
    /// rows (the rewrite compacts it).
    pub async fn find_replaced(
        &self,
        ctx: &SessionContext,
        name: &str,
        version: u64,
        keys: DataFrame,
        on: &[&str],
        schema: &SchemaRef,
    ) -> Result<Option<(Patch, Vec<RecordBatch>)>> {
        let table = self.delta_at(name, version).await?;
        // The recomputed rows are appended: the table must have their columns and types (a
        // column retyped or added in pipeline.toml rewrites the table instead).
        if !same_columns(&table.snapshot()?.snapshot().arrow_schema(), schema) {
            return Ok(None);
        }
        let Some(active) = active_files(self, name, &table).await? else {
            return Ok(None);
        };
        let mut files = Vec::with_capacity(active.len());
        let mut actions = Vec::with_capacity(active.len());
        let (mut committed_rows, mut stored_rows) = (0u64, 0u64);
        for a in active {
            stored_rows += a.records;
            committed_rows += a.records.saturating_sub(a.file.deleted.len());
            files.push(a.file);
            actions.push((a.add, a.remove));
        }
        // Patches pile up (a file and deletions each): past a point the table is rewritten
        // whole, which compacts it (as a complete run does).
        if files.len() > MAX_FILES
            || (stored_rows - committed_rows) * 100 > stored_rows * MAX_DELETED_PCT
        {
            return Ok(None);
        }
        // The positions of the rows whose key is replaced: the key columns of every file with
        // each row's file and position, joined with the keys (the smaller side, built first).
        let key_fields: Vec<Field> = on
            .iter()
            .zip(keys.schema().fields())
            .map(|(c, f)| Field::new(*c, f.data_type().clone(), true))
            .collect();
        let mut scan_fields = key_fields.clone();
        scan_fields.push(Field::new("_patch_file", DataType::UInt32, false));
        scan_fields.push(Field::new("_patch_pos", DataType::UInt64, false));
        let scan_schema = Arc::new(Schema::new(scan_fields));
        let files = Arc::new(files);
        let partitions: Vec<Arc<dyn PartitionStream>> = (0..files.len())
            .map(|i| {
                Arc::new(KeyColumns {
                    objects: self.objects.clone(),
                    files: files.clone(),
                    file: i,
                    schema: scan_schema.clone(),
                    on: on.iter().map(|c| c.to_string()).collect(),
                }) as Arc<dyn PartitionStream>
            })
            .collect();
        let mut positions = vec![RoaringTreemap::new(); files.len()];
        if !partitions.is_empty() {
            let scan = StreamingTable::try_new(scan_schema, partitions)?;
            let stored = ctx.read_table(Arc::new(scan))?;
            let left: Vec<String> = (0..on.len()).map(|i| format!("_patch_key{i}")).collect();
            let keys = keys.clone().select(
                keys.schema()
                    .fields()
                    .iter()
                    .zip(&left)
                    .map(|(f, n)| col(format!("\"{}\"", f.name())).alias(n))
                    .collect::<Vec<_>>(),
            )?;
            let left: Vec<&str> = left.iter().map(String::as_str).collect();
            let hits = crate::engine::as_written(
                keys.join(stored, JoinType::RightSemi, &left, on, None)?
                    .select(vec![col("_patch_file"), col("_patch_pos")])?,
            )
            .collect()
            .await?;
            for b in hits {
                let f = b.column(0).as_any().downcast_ref::<UInt32Array>();
                let p = b.column(1).as_any().downcast_ref::<UInt64Array>();
                let (Some(f), Some(p)) = (f, p) else {
                    return Err(Error::store(format!("table {name}: positions not read")));
                };
                for (f, p) in f.values().iter().zip(p.values()) {
                    let f = *f as usize;
                    // A row deleted earlier is not a committed row.
                    if !files[f].deleted.contains(*p) {
                        positions[f].insert(*p);
                    }
                }
            }
        }
        // The replaced rows themselves, read by position from the files holding them.
        let mut touched = Vec::new();
        let mut removed = Vec::new();
        let mut removed_rows = 0;
        for (i, ((add, remove), found)) in actions.into_iter().zip(positions).enumerate() {
            if found.is_empty() {
                continue;
            }
            removed_rows += found.len();
            let rows = read_rows(self, &files[i], &found)
                .await
                .map_err(|e| Error::store(format!("table {name}: {e}")))?;
            for b in rows {
                removed.push(conform_batch(&b, schema)?);
            }
            let mut deleted = files[i].deleted.clone();
            deleted |= found;
            touched.push(Touched {
                add,
                remove,
                deleted,
            });
        }
        Ok(Some((
            Patch {
                version,
                touched,
                committed_rows,
                removed_rows,
            },
            removed,
        )))
    }

    /// Commits a [`Patch`] and the rows replacing the deleted ones as the next Delta version
    /// of `name` (not visible until committed to the catalog). Uncommitted versions of a killed
    /// run are first undone (a Delta restore to the committed version), and a table written
    /// before deletion vectors gets the feature.
    pub async fn write_patch(
        &self,
        catalog: &Catalog,
        name: &str,
        patch: &Patch,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
        run_id: &str,
    ) -> Result<u64> {
        let mut table = self.delta_latest(name).await?;
        if table.version() != Some(patch.version) {
            let (restored, _) = table
                .restore()
                .with_version_to_restore(patch.version)
                .await?;
            table = restored;
        }
        if !has_deletion_vectors(&table)? {
            table = table
                .add_feature()
                .with_feature(deltalake::kernel::TableFeatures::DeletionVectors)
                .with_allow_protocol_versions_increase(true)
                .await?;
        }
        let current = table
            .version()
            .ok_or_else(|| Error::store(format!("table {name}: no Delta version")))?;
        if batches.iter().any(|b| b.num_rows() > 0) {
            let mut at = catalog.clone();
            at.tables.insert(name.to_string(), current);
            self.write_table(&at, name, schema, batches, WriteMode::Append, run_id)
                .await?;
            table = self.delta_latest(name).await?;
        }
        crate::tasks::failpoint(&format!("patch.{name}.appended"));
        if patch.touched.is_empty() {
            return table
                .version()
                .ok_or_else(|| Error::store(format!("table {name}: no Delta version")));
        }
        let mut actions = Vec::with_capacity(patch.touched.len() * 2);
        for t in &patch.touched {
            let mut add = t.add.clone();
            add.deletion_vector = Some(encode_inline(&t.deleted)?);
            add.data_change = true;
            actions.push(Action::Remove(t.remove.clone()));
            actions.push(Action::Add(add));
        }
        let snapshot = table.snapshot()?;
        let commit = CommitBuilder::default()
            .with_actions(actions)
            .with_app_metadata(
                [(
                    "igaflow_run_id".to_string(),
                    serde_json::Value::from(run_id),
                )]
                .into(),
            )
            .build(
                Some(snapshot),
                table.log_store(),
                DeltaOperation::Delete {
                    predicate: Some("rows recomputed by a dirty task".to_string()),
                },
            )
            .await?;
        crate::tasks::failpoint(&format!("patch.{name}.deleted"));
        Ok(commit.version())
    }
}

/// Whether `stored` has exactly `new`'s columns, with the same types (nullability aside; the
/// string types as one).
fn same_columns(stored: &Schema, new: &Schema) -> bool {
    fn plain(t: &DataType) -> &DataType {
        match t {
            DataType::Utf8View | DataType::LargeUtf8 => &DataType::Utf8,
            t => t,
        }
    }
    stored.fields().len() == new.fields().len()
        && new.fields().iter().all(|f| {
            stored
                .field_with_name(f.name())
                .is_ok_and(|s| plain(s.data_type()) == plain(f.data_type()))
        })
}

/// Whether the table's protocol has the deletion vectors feature.
fn has_deletion_vectors(table: &deltalake::DeltaTable) -> Result<bool> {
    let protocol = serde_json::to_value(table.snapshot()?.protocol())
        .map_err(|e| Error::store(format!("protocol: {e}")))?;
    Ok(protocol["readerFeatures"]
        .as_array()
        .is_some_and(|f| f.iter().any(|f| f == "deletionVectors")))
}

/// An inline deletion vector's bitmap (Z85 of the magic number and the portable bitmap).
fn decode_inline(z85: &str) -> std::result::Result<RoaringTreemap, String> {
    let bytes = z85::decode(z85).map_err(|e| format!("deletion vector: {e}"))?;
    if bytes.len() < 4
        || u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) != PORTABLE_MAGIC
    {
        return Err("deletion vector: not a portable Roaring bitmap".to_string());
    }
    RoaringTreemap::deserialize_from(&bytes[4..]).map_err(|e| format!("deletion vector: {e}"))
}

/// The inline descriptor of a bitmap of deleted positions.
fn encode_inline(deleted: &RoaringTreemap) -> Result<DeletionVectorDescriptor> {
    let mut bytes = PORTABLE_MAGIC.to_le_bytes().to_vec();
    deleted
        .serialize_into(&mut bytes)
        .map_err(|e| Error::store(format!("deletion vector: {e}")))?;
    let size = bytes.len();
    // Z85 encodes groups of 4 bytes: the bitmap reader ignores the zeros after it.
    bytes.resize(size.div_ceil(4) * 4, 0);
    Ok(DeletionVectorDescriptor {
        storage_type: StorageType::Inline,
        path_or_inline_dv: z85::encode(&bytes),
        offset: None,
        size_in_bytes: size as i32,
        cardinality: deleted.len() as i64,
    })
}

/// The key columns of one data file, each row with its file and position in it.
struct KeyColumns {
    objects: Arc<dyn object_store::ObjectStore>,
    files: Arc<Vec<DataFile>>,
    file: usize,
    schema: SchemaRef,
    on: Vec<String>,
}

impl std::fmt::Debug for KeyColumns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyColumns({})", self.files[self.file].path)
    }
}

impl PartitionStream for KeyColumns {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let file = &self.files[self.file];
        let reader = open(&self.objects, file);
        let (schema, on, index) = (self.schema.clone(), self.on.clone(), self.file as u32);
        let stream = async move {
            let builder = ParquetRecordBatchStreamBuilder::new(reader?).await?;
            let roots: Vec<usize> = on
                .iter()
                .map(|c| builder.schema().index_of(c))
                .collect::<std::result::Result<_, _>>()?;
            let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
            let rows = builder.with_projection(mask).build()?;
            let mut start = 0u64;
            Ok::<_, datafusion::error::DataFusionError>(rows.map(move |b| {
                let b = b?;
                let n = b.num_rows() as u64;
                let mut columns = Vec::with_capacity(on.len() + 2);
                for (c, f) in on.iter().zip(schema.fields()) {
                    columns.push(cast(b.column(b.schema().index_of(c)?), f.data_type())?);
                }
                columns.push(Arc::new(UInt32Array::from(vec![index; n as usize])) as _);
                columns.push(Arc::new(UInt64Array::from_iter_values(start..start + n)) as _);
                start += n;
                Ok(RecordBatch::try_new(schema.clone(), columns)?)
            }))
        };
        Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            futures::stream::once(stream).try_flatten(),
        ))
    }
}

/// The rows of a data file at `positions` (all columns).
async fn read_rows(
    store: &Store,
    file: &DataFile,
    positions: &RoaringTreemap,
) -> Result<Vec<RecordBatch>> {
    let reader = open(&store.objects, file)?;
    let builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(|e| Error::store(format!("{}: {e}", file.path)))?;
    let total = builder.metadata().file_metadata().num_rows() as u64;
    let rows = builder
        .with_row_selection(selection(positions, total, true))
        .build()
        .map_err(|e| Error::store(format!("{}: {e}", file.path)))?;
    rows.try_collect()
        .await
        .map_err(|e| Error::store(format!("{}: {e}", file.path)))
}

/// A Parquet row selection over a file of `total` rows: the rows at `positions` when `listed`,
/// else every other row (a deletion vector's kept rows). Positions past the end are ignored.
pub(super) fn selection(positions: &RoaringTreemap, total: u64, listed: bool) -> RowSelection {
    type Run = fn(usize) -> RowSelector;
    let (named, others): (Run, Run) = if listed {
        (RowSelector::select, RowSelector::skip)
    } else {
        (RowSelector::skip, RowSelector::select)
    };
    // Runs of named positions, with the other rows between them (adjacent runs are merged).
    let mut selectors = Vec::new();
    let mut at = 0u64;
    for p in positions.iter().take_while(|&p| p < total) {
        if p > at {
            selectors.push(others((p - at) as usize));
        }
        selectors.push(named(1));
        at = p + 1;
    }
    if at < total {
        selectors.push(others((total - at) as usize));
    }
    RowSelection::from(selectors)
}

/// `b` with `schema`'s columns, by name and cast to their types (a missing one NULL).
fn conform_batch(b: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| match b.schema().index_of(f.name()) {
            Ok(i) => Ok(cast(b.column(i), f.data_type())?),
            Err(_) => Ok(datafusion::arrow::array::new_null_array(
                f.data_type(),
                b.num_rows(),
            )),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// A Parquet reader of a data file (DataFusion's, as its scans use).
fn open(
    objects: &Arc<dyn object_store::ObjectStore>,
    file: &DataFile,
) -> datafusion::error::Result<Box<dyn AsyncFileReader>> {
    let reader = DefaultParquetFileReaderFactory::new(objects.clone()).create_reader(
        0,
        PartitionedFile::new(file.path.to_string(), file.size),
        None,
        &ExecutionPlanMetricsSet::new(),
    )?;
    Ok(reader)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_selection_names_exactly_the_listed_rows_or_exactly_the_others() {
        let positions: RoaringTreemap = [0u64, 1, 5, 9, 42].into_iter().collect();
        let kept: Vec<RowSelector> = selection(&positions, 10, false).iter().copied().collect();
        assert_eq!(
            kept,
            vec![
                RowSelector::skip(2),
                RowSelector::select(3),
                RowSelector::skip(1),
                RowSelector::select(3),
                RowSelector::skip(1),
            ]
        );
        let listed: Vec<RowSelector> = selection(&positions, 12, true).iter().copied().collect();
        assert_eq!(
            listed,
            vec![
                RowSelector::select(2),
                RowSelector::skip(3),
                RowSelector::select(1),
                RowSelector::skip(3),
                RowSelector::select(1),
                RowSelector::skip(2),
            ]
        );
        assert_eq!(selection(&positions, 10, true).row_count(), 4);
        assert_eq!(selection(&RoaringTreemap::new(), 4, false).row_count(), 4);
        assert_eq!(selection(&RoaringTreemap::new(), 4, true).row_count(), 0);
    }
}
