//! Dirty replacements written as Delta deletion vectors (`[store] deletion_vectors = true`).
//!
//! A dirty task recomputes a few owners' rows of a large table (0.1% of the owners: a few
//! thousand rows of millions). Those rows lie in every data file, so rewriting the table means
//! reading and writing all of it. Instead, [`Store::find_replaced`] reads only the key columns
//! of each committed data file (the pages whose bounds in the file's page index may hold a
//! key: at 1M identities a scope's keys still fall in nearly every page of the larger tables,
//! in about half of `classification`'s and three fifths of `correlations'`), looks each row up
//! in the replaced keys (its last column merged with the keys' sorted values, the whole row
//! hashed only when that matches; a row equal to the one before it, as in a table stored in
//! key order, takes its answer; a column whose pages are all dictionary-encoded is read as the
//! dictionary's keys), and reads back just the matching rows (a Parquet row
//! selection). The lookup is a storage kernel like a filter's, over whole files: a DataFusion
//! join of the key columns with the keys, which it replaced, spent more on repartitioning and
//! probing than on decoding (the dirty role model's five tables at 1M identities: 1.40-1.54 s
//! -> 1.15-1.20 s). [`Store::write_patch`] then commits the recomputed rows as one new data file and
//! each touched file again with a deletion vector marking its replaced rows: a Delta commit
//! whose size is that of the change, not of the table.
//!
//! Where the file has a key index of the last key column ([`super::key_index`], written with
//! a table written whole), only the rows it points to are read: at 1M identities a lookup or a
//! patch of a few thousand owners then reads some thousands of rows, not every page.
//!
//! A patch also tells which of the keys' values (of their last column: an owner or account
//! key) no other live row of the files held, so that once committed no live row of those files
//! holds them. The process remembers that for the version the patch commits ([`Cleared`]): a
//! later lookup in that version on the same column reads those files only for its other
//! values, and not at all when there are none. That is the orders task of an incremental job
//! reading the rows of the owners the role model has just recomputed: the 1M company's
//! lookups of `assigned_links`, `assigned_scalars` and `assigned_resources` by owner and of
//! `correlations` by account read only the patches' new files.
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

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int32Array, RecordBatch, StringArray, StringViewArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::Int32Type;
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::parquet::{
    DefaultParquetFileReaderFactory, ParquetFileReaderFactory,
};
use datafusion::parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, RowSelection, RowSelector,
};
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use datafusion::parquet::basic::Encoding;
use datafusion::parquet::file::metadata::{PageIndexPolicy, RowGroupMetaData};
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::prelude::*;
use deltalake::kernel::transaction::CommitBuilder;
use deltalake::kernel::{Action, Add, DeletionVectorDescriptor, Remove, StorageType};
use deltalake::protocol::DeltaOperation;
use futures::TryStreamExt;
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
    /// The committed version's data files, and the positions of the rows the patch deletes in
    /// each (read by [`Store::replaced_rows`]).
    files: Arc<Vec<DataFile>>,
    found: Vec<RoaringTreemap>,
    /// The key values the patch leaves in none of the committed files.
    cleared: Arc<Cleared>,
}

/// Values of a key column that no live row of some data files holds: what a patch leaves
/// (every row of the files holding one of the values was a replaced key's, and is deleted).
/// Remembered for the version the patch commits, so that a later lookup in that version (the
/// orders task reading the owners the role model has just recomputed) reads the files only
/// for the other values — when there are none, not at all.
#[derive(Debug)]
pub(super) struct Cleared {
    /// The key column (the last of the patch's key columns) and its type in the keys.
    column: String,
    last_type: DataType,
    /// The values, sorted, as [`KeySet::lasts`] holds them.
    values: Vec<Vec<u8>>,
    /// The data files cleared of them (the files of the version the patch was found in).
    files: datafusion::common::HashSet<object_store::path::Path>,
}

impl Cleared {
    /// Whether a lookup on columns `on`, keys of `types`, can leave the values out: its last
    /// column is this one, with text as text or the same type.
    fn applies_to(&self, on: &[&str], types: &[DataType]) -> bool {
        let text = crate::engine::is_text;
        on.last() == Some(&self.column.as_str())
            && types
                .last()
                .is_some_and(|t| t == &self.last_type || (text(t) && text(&self.last_type)))
    }
}

/// What [`Store::key_positions`] finds: the positions of the keys' rows in each file, and the
/// values of the keys' last column that no other live row of the files holds.
struct Positions {
    files: Vec<RoaringTreemap>,
    cleared: Cleared,
    /// Whether a key index gave the positions of some file (which then may hold rows of
    /// other values with a key's hash).
    indexed: bool,
}

/// The most rows of one key lookup that [`Store::rows_of_keys`] remembers.
const FOUND_ROWS: usize = 250_000;

/// A key lookup's rows ([`Store::rows_of_keys`]), with what they depend on: the table version,
/// the key columns and types, the keys (encoded and sorted, [`KeySet::sorted_rows`]) and the
/// schema they were read in.
pub(super) struct Found {
    name: String,
    version: u64,
    on: Vec<String>,
    key_types: Vec<DataType>,
    keys: Vec<Vec<u8>>,
    schema: SchemaRef,
    rows: Vec<RecordBatch>,
}

impl Found {
    /// Whether this is a lookup in a version of table `name` before `version`.
    pub(super) fn older(&self, name: &str, version: u64) -> bool {
        self.name == name && self.version < version
    }

    fn same_lookup(&self, other: &Found) -> bool {
        self.name == other.name
            && self.version == other.version
            && self.on == other.on
            && self.key_types == other.key_types
            && self.schema == other.schema
            && self.keys == other.keys
    }
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

    /// Rows the patch deletes.
    pub fn removed_rows(&self) -> u64 {
        self.removed_rows
    }
}

/// One committed data file: where it is and which of its rows are already deleted.
#[derive(Clone, Debug)]
pub(super) struct DataFile {
    pub(super) path: object_store::path::Path,
    pub(super) size: u64,
    pub(super) deleted: RoaringTreemap,
    /// Rows stored in the file, deleted ones included.
    pub(super) records: u64,
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
                records: records as u64,
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
    /// `keys` (column by column, NULL equal to nothing), as a [`Patch`] deleting them (the
    /// rows themselves are read by [`Store::replaced_rows`], only when wanted: reading them
    /// decodes every page that holds one, and at a few thousand keys that is every page of
    /// every column). `schema` is the recomputed rows'. `None` when the table is to be rewritten instead:
    /// other columns or types than `schema`'s, a deletion vector in a file of its own (written
    /// by another tool), a file without a row count, a partitioned table, or a table that
    /// patches have left with more than [`MAX_FILES`] files or [`MAX_DELETED_PCT`]% deleted
    /// rows (the rewrite compacts it).
    pub async fn find_replaced(
        &self,
        name: &str,
        version: u64,
        keys: DataFrame,
        on: &[&str],
        schema: &SchemaRef,
    ) -> Result<Option<Patch>> {
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
        let files = Arc::new(files);
        let wanted = Wanted::of(keys).await?;
        let positions = self
            .key_positions(name, version, files.clone(), &wanted, on, false)
            .await?;
        let Positions {
            files: positions,
            cleared,
            ..
        } = positions;
        let mut touched = Vec::new();
        let mut removed_rows = 0;
        for (i, ((add, remove), found)) in actions.into_iter().zip(&positions).enumerate() {
            if found.is_empty() {
                continue;
            }
            removed_rows += found.len();
            let mut deleted = files[i].deleted.clone();
            deleted |= found;
            touched.push(Touched {
                add,
                remove,
                deleted,
            });
        }
        Ok(Some(Patch {
            version,
            touched,
            committed_rows,
            removed_rows,
            files,
            found: positions,
            cleared: Arc::new(cleared),
        }))
    }

    /// The rows `patch` deletes from table `name`, read by position, in `schema` (by name).
    pub async fn replaced_rows(
        &self,
        name: &str,
        patch: &Patch,
        schema: &SchemaRef,
    ) -> Result<Vec<RecordBatch>> {
        self.read_found(name, &patch.files, &patch.found, schema)
            .await
    }

    /// The committed rows of table `name` at `version` whose columns `on` equal a row of
    /// `keys`, read by position, with `schema`: what a semi join of the table with the keys
    /// gives, without decoding its other columns for every row. `None` when the table's files
    /// cannot be read that way (see [`active_files`]). The rows of a lookup (up to
    /// [`FOUND_ROWS`]) are remembered for the rest of the process: a committed version never
    /// changes, and a later task may look the same keys up again.
    pub async fn rows_of_keys(
        &self,
        name: &str,
        version: u64,
        keys: DataFrame,
        on: &[&str],
        schema: &SchemaRef,
    ) -> Result<Option<Vec<RecordBatch>>> {
        let Some(files) = self.files_at(name, version).await? else {
            return Ok(None);
        };
        let wanted = Wanted::of(keys).await?;
        let id = Found {
            name: name.to_string(),
            version,
            on: on.iter().map(|c| c.to_string()).collect(),
            key_types: wanted.types.clone(),
            keys: wanted.keys.sorted_rows(),
            schema: schema.clone(),
            rows: Vec::new(),
        };
        if let Some(known) = self
            .found
            .lock()
            .expect("not poisoned")
            .iter()
            .find(|f| f.same_lookup(&id))
        {
            tracing::debug!(table = name, "rows of keys found before");
            return Ok(Some(known.rows.clone()));
        }
        let positions = self
            .key_positions(name, version, files.clone(), &wanted, on, true)
            .await?;
        let mut rows = self
            .read_found(name, &files, &positions.files, schema)
            .await?;
        if positions.indexed {
            // A key index points to the rows of each key's hash: those of another value with
            // the same hash are left out here.
            rows = rows
                .iter()
                .map(|b| only_values(b, on[0], &wanted.keys.lasts))
                .collect::<Result<_>>()?;
        }
        if rows.iter().map(|b| b.num_rows()).sum::<usize>() <= FOUND_ROWS {
            self.found.lock().expect("not poisoned").push(Found {
                rows: rows.clone(),
                ..id
            });
        }
        Ok(Some(rows))
    }

    /// The data files of table `name` at committed `version`, `None` when they cannot be read
    /// by position (see [`active_files`]); remembered for the next lookup.
    async fn files_at(&self, name: &str, version: u64) -> Result<super::VersionFiles> {
        let id = (name.to_string(), version);
        if let Some(known) = self.versions.lock().expect("not poisoned").get(&id) {
            return Ok(known.clone());
        }
        let table = self.delta_at(name, version).await?;
        let files = active_files(self, name, &table)
            .await?
            .map(|active| Arc::new(active.into_iter().map(|a| a.file).collect::<Vec<_>>()));
        self.versions
            .lock()
            .expect("not poisoned")
            .insert(id, files.clone());
        Ok(files)
    }

    /// The rows of `files` (of table `name`) at `positions` (one set per file), in `schema`.
    async fn read_found(
        &self,
        name: &str,
        files: &[DataFile],
        positions: &[RoaringTreemap],
        schema: &SchemaRef,
    ) -> Result<Vec<RecordBatch>> {
        // A task per share of a file's row groups, one share per core, as the keys are found:
        // reading the rows decodes about every page of every column.
        let parts = std::thread::available_parallelism().map_or(1, |n| n.get());
        let tasks: Vec<_> = files
            .iter()
            .zip(positions)
            .filter(|(_, found)| !found.is_empty())
            .flat_map(|(file, found)| (0..parts).map(move |part| (file, found, part)))
            .map(|(file, found, part)| {
                let (objects, file, found) = (self.objects.clone(), file.clone(), found.clone());
                tokio::spawn(async move { read_rows(&objects, &file, &found, (part, parts)).await })
            })
            .collect();
        let mut rows = Vec::new();
        for task in tasks {
            let read = task
                .await
                .map_err(|e| Error::store(format!("table {name}: {e}")))?
                .map_err(|e| Error::store(format!("table {name}: {e}")))?;
            for b in read {
                rows.push(conform_batch(&b, schema)?);
            }
        }
        Ok(rows)
    }

    /// For each of `files` (of table `name` at `version`), the positions of its committed rows
    /// whose columns `on` equal a row of `wanted`; and the values of the
    /// keys' last column that no other row of the files holds (see [`Cleared`]). With
    /// `indexed`, a file's key index may give the positions instead: then they may include
    /// rows of other values (see [`Positions::indexed`]), and nothing is taken as cleared.
    async fn key_positions(
        &self,
        name: &str,
        version: u64,
        files: Arc<Vec<DataFile>>,
        wanted: &Wanted,
        on: &[&str],
        indexed: bool,
    ) -> Result<Positions> {
        let (wanted, key_types) = (&wanted.keys, &wanted.types);
        // The key columns of every file read (a task per share of its row groups, one share
        // per core) and each row looked up in the keys; or, where `indexed` allows it for a
        // lookup on one text column, the positions taken from the file's key index.
        // The files a patch of this version cleared of some of the keys' last values are
        // looked up for the others only (and not read when there are none).
        let cleared = self
            .cleared
            .lock()
            .expect("not poisoned")
            .get(&(name.to_string(), version))
            .cloned()
            .filter(|c| c.applies_to(on, key_types));
        let rest = cleared
            .as_ref()
            .map(|c| Arc::new(wanted.without(&c.values)));
        let parts = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut positions = vec![RoaringTreemap::new(); files.len()];
        let mut from_index = vec![false; files.len()];
        // The rows of a file that may hold a key, from its index of the last key column:
        // every row holding one of the keys' last values (and a few of other values with the
        // same hash), where the others are not read.
        let mut candidates: Vec<Option<Arc<RoaringTreemap>>> = vec![None; files.len()];
        let last_is_text = key_types.last().is_some_and(crate::engine::is_text);
        let keys_of = |i: usize| match (&cleared, &rest) {
            (Some(c), Some(rest)) if c.files.contains(&files[i].path) => rest.clone(),
            _ => wanted.clone(),
        };
        if last_is_text {
            for (i, file) in files.iter().enumerate() {
                let keys = keys_of(i);
                if keys.rows.is_empty() {
                    continue;
                }
                if let Some(index) = self.key_index(name, file, on[on.len() - 1]).await {
                    let mut found = index.rows_of(&keys.lasts);
                    found -= &file.deleted;
                    if indexed && on.len() == 1 {
                        positions[i] = found;
                        from_index[i] = true;
                    } else {
                        candidates[i] = Some(Arc::new(found));
                    }
                }
            }
        }
        let tasks: Vec<_> = (0..files.len())
            .filter(|&i| !from_index[i])
            .filter_map(|i| {
                let keys = keys_of(i);
                if keys.rows.is_empty() && !wanted.rows.is_empty() {
                    tracing::debug!(table = name, file = %files[i].path, "keys cleared by a patch");
                }
                (!keys.rows.is_empty()).then_some((i, keys))
            })
            .flat_map(|(i, keys)| (0..parts).map(move |part| (i, part, keys.clone())))
            .map(|(i, part, keys)| {
                let (objects, files) = (self.objects.clone(), files.clone());
                let on: Vec<String> = on.iter().map(|c| c.to_string()).collect();
                let key_types = key_types.clone();
                let candidates = candidates[i].clone();
                let task = tokio::spawn(async move {
                    let share = (part, parts);
                    let (file, candidates) = (&files[i], candidates.as_deref());
                    let lookup =
                        positions_of(&objects, file, share, &on, &key_types, &keys, candidates)
                            .await?;
                    let shared: Vec<Vec<u8>> = keys
                        .lasts
                        .iter()
                        .zip(&lookup.shared)
                        .filter(|(_, s)| **s)
                        .map(|(v, _)| v.clone())
                        .collect();
                    Ok::<_, datafusion::error::DataFusionError>((lookup.found, shared))
                });
                (i, task)
            })
            .collect();
        let mut shared: datafusion::common::HashSet<Vec<u8>> = Default::default();
        for (i, task) in tasks {
            let (found, values) = task
                .await
                .map_err(|e| Error::store(format!("table {name}: {e}")))?
                .map_err(|e| Error::store(format!("table {name}: {e}")))?;
            positions[i] |= found;
            shared.extend(values);
        }
        let cleared = Cleared {
            column: on[on.len() - 1].to_string(),
            last_type: key_types[key_types.len() - 1].clone(),
            values: wanted
                .lasts
                .iter()
                .filter(|v| !shared.contains(*v))
                .cloned()
                .collect(),
            files: files.iter().map(|f| f.path.clone()).collect(),
        };
        // A file looked up by its index says nothing of the values other rows hold: none is
        // taken as cleared from it (only patches, which read the files, remember any).
        let indexed = from_index.iter().any(|&f| f);
        let cleared = match indexed {
            true => Cleared {
                values: Vec::new(),
                ..cleared
            },
            false => cleared,
        };
        Ok(Positions {
            files: positions,
            cleared,
            indexed,
        })
    }

    /// The key index of column `column` of `file` (of table `name`), loaded once per
    /// process; `None` when the file has none (or one that is not its own).
    async fn key_index(
        &self,
        name: &str,
        file: &DataFile,
        column: &str,
    ) -> Option<Arc<super::key_index::KeyIndex>> {
        let path = super::key_index::path_of(self, name, &file.path, column);
        if let Some(known) = self.indexes.lock().expect("not poisoned").get(&path) {
            return known.clone();
        }
        // A local store's index is mapped, not read: a lookup touches a few of its pages.
        let local = self.local_dir().map(|dir| dir.join(path.as_ref()));
        let mapped = local.and_then(|p| {
            let file = std::fs::File::open(p).ok()?;
            // SAFETY: an index file is written once, whole, and never changed; `parse` checks
            // its length against the header.
            let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
            Some(bytes::Bytes::from_owner(map))
        });
        let index = match mapped {
            Some(bytes) => super::key_index::KeyIndex::parse(bytes, file.records),
            None if self.local_dir().is_some() => None,
            None => self.fetch_key_index(&path, file.records).await,
        };
        self.indexes
            .lock()
            .expect("not poisoned")
            .insert(path, index.clone());
        index
    }

    /// A key index read from an object store ([`Store::key_index`]).
    async fn fetch_key_index(
        &self,
        path: &object_store::path::Path,
        records: u64,
    ) -> Option<Arc<super::key_index::KeyIndex>> {
        use object_store::ObjectStoreExt;
        match self.objects.get(path).await {
            Ok(got) => match got.bytes().await {
                Ok(bytes) => super::key_index::KeyIndex::parse(bytes, records),
                Err(e) => {
                    tracing::debug!(%path, "key index not read: {e}");
                    None
                }
            },
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => {
                tracing::debug!(%path, "key index not read: {e}");
                None
            }
        }
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
            let version = table
                .version()
                .ok_or_else(|| Error::store(format!("table {name}: no Delta version")))?;
            self.remember_cleared(name, version, patch);
            return Ok(version);
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
            .with_app_metadata(super::run_metadata(run_id))
            .build(
                Some(snapshot),
                table.log_store(),
                DeltaOperation::Delete {
                    predicate: Some("rows recomputed by a dirty task".to_string()),
                },
            )
            .await?;
        crate::tasks::failpoint(&format!("patch.{name}.deleted"));
        self.remember_cleared(name, commit.version(), patch);
        Ok(commit.version())
    }

    /// Remembers the key values `patch` cleared its files of, for lookups in `version`.
    fn remember_cleared(&self, name: &str, version: u64, patch: &Patch) {
        if !patch.cleared.values.is_empty() {
            self.cleared
                .lock()
                .expect("not poisoned")
                .insert((name.to_string(), version), patch.cleared.clone());
        }
    }
}

/// Whether `stored` has exactly `new`'s columns, with the same types (nullability aside; the
/// string types as one).
/// The rows of `b` whose column `column`, as text, is one of `values` (sorted).
fn only_values(b: &RecordBatch, column: &str, values: &[Vec<u8>]) -> Result<RecordBatch> {
    let c = b
        .column_by_name(column)
        .ok_or_else(|| Error::store(format!("key column {column} not read")))?;
    let c = cast(c, &DataType::Utf8View)?;
    let c = c.as_string_view();
    let keep: datafusion::arrow::array::BooleanArray = (0..c.len())
        .map(|i| {
            Some(
                !c.is_null(i)
                    && values
                        .binary_search_by(|v| v[..].cmp(c.value(i).as_bytes()))
                        .is_ok(),
            )
        })
        .collect();
    Ok(datafusion::arrow::compute::filter_record_batch(b, &keep)?)
}

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

/// Replaced keys: each row of the key columns as text (see [`KeySet::encode`]), and the
/// distinct values of the last column (the most selective: an owner or account key after its
/// entity or resource type), sorted, to rule out pages by their bounds and rows by a merge
/// ([`Sorted`]). Rows with a NULL are left out, as a join leaves them.
struct KeySet {
    rows: datafusion::common::HashSet<Vec<u8>>,
    lasts: Vec<Vec<u8>>,
}

/// The keys of a lookup or a patch, collected, with the types of their columns.
struct Wanted {
    keys: Arc<KeySet>,
    types: Vec<DataType>,
}

impl Wanted {
    async fn of(keys: DataFrame) -> Result<Self> {
        let types = keys
            .schema()
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        Ok(Self {
            keys: Arc::new(KeySet::of(&keys.collect().await?)?),
            types,
        })
    }
}

impl KeySet {
    /// The encoded rows, sorted: equal for equal sets of keys.
    fn sorted_rows(&self) -> Vec<Vec<u8>> {
        let mut rows: Vec<Vec<u8>> = self.rows.iter().cloned().collect();
        rows.sort_unstable();
        rows
    }

    fn of(batches: &[RecordBatch]) -> datafusion::error::Result<Self> {
        let mut rows = datafusion::common::HashSet::default();
        let mut lasts = Vec::new();
        let mut buf = Vec::new();
        for b in batches {
            let columns = b
                .columns()
                .iter()
                .map(|c| cast(c, &DataType::Utf8View))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let columns: Vec<KeyText> = columns
                .iter()
                .map(|c| KeyText::Views(c.as_string_view()))
                .collect();
            for i in 0..b.num_rows() {
                if Self::encode(&columns, i, &mut buf) {
                    rows.insert(buf.clone());
                    lasts.push(columns[columns.len() - 1].value(i).to_vec());
                }
            }
        }
        lasts.sort_unstable();
        lasts.dedup();
        Ok(Self { rows, lasts })
    }

    /// The keys whose last value is not among `values` (sorted).
    fn without(&self, values: &[Vec<u8>]) -> Self {
        let out = |v: &[u8]| values.binary_search_by(|x| x[..].cmp(v)).is_err();
        Self {
            rows: self
                .rows
                .iter()
                .filter(|r| out(Self::last_of(r)))
                .cloned()
                .collect(),
            lasts: self.lasts.iter().filter(|v| out(v)).cloned().collect(),
        }
    }

    /// The last value of an encoded row ([`KeySet::encode`]).
    fn last_of(mut row: &[u8]) -> &[u8] {
        loop {
            let n = u32::from_le_bytes(row[..4].try_into().expect("four bytes")) as usize;
            if row.len() == 4 + n {
                return &row[4..];
            }
            row = &row[4 + n..];
        }
    }

    /// Whether a value of the last column between `min` and `max` (bytes, inclusive) can be
    /// a key's.
    fn last_between(&self, min: &[u8], max: &[u8]) -> bool {
        let at = self.lasts.partition_point(|v| v.as_slice() < min);
        self.lasts.get(at).is_some_and(|v| v.as_slice() <= max)
    }

    /// Row `i` of `columns` into `buf`: each value's length and bytes. False when a value is
    /// NULL (such a row matches no key).
    fn encode(columns: &[KeyText], i: usize, buf: &mut Vec<u8>) -> bool {
        buf.clear();
        for c in columns {
            if c.is_null(i) {
                return false;
            }
            let v = c.value(i);
            buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
            buf.extend_from_slice(v);
        }
        true
    }
}

/// The positions in `file` of its committed rows whose columns `on` (cast to `types`, the
/// replaced keys' types) equal one of `wanted`, in share `(part, parts)` of its row groups (a
/// task each). A table patched here is stored in key order, so equal keys come in runs: a row
/// equal to the one before it takes its answer, and the pages of the last key column whose
/// bounds (the file's page index) hold no key are not read at all ([`pages_of_keys`]).
async fn positions_of(
    objects: &Arc<dyn object_store::ObjectStore>,
    file: &DataFile,
    (part, parts): (usize, usize),
    on: &[String],
    types: &[DataType],
    wanted: &KeySet,
    candidates: Option<&RoaringTreemap>,
) -> datafusion::error::Result<Lookup> {
    // Text read as views (no copy of the values), as DataFusion's scans read it.
    let mut reader = open(objects, file)?;
    let indexed = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
    let meta = ArrowReaderMetadata::load_async(&mut reader, indexed.clone()).await?;
    let Some(share) = Share::of(meta.metadata().row_groups(), (part, parts)) else {
        return Ok(Lookup::none(wanted));
    };
    let groups = share.groups.clone();
    let text = crate::engine::is_text;
    // Text read as views (no copy of the values), as DataFusion's scans read it; a key column
    // whose pages in the share are all dictionary-encoded read as the dictionary's keys (no
    // view a row: equal keys are equal values, and a run of them is one lookup).
    let wanted_text: Vec<&String> = on
        .iter()
        .zip(types)
        .filter(|(_, t)| text(t))
        .map(|(c, _)| c)
        .collect();
    let viewed = Schema::new(
        meta.schema()
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Utf8
                    if wanted_text.contains(&f.name())
                        && all_dictionary(meta.metadata(), &groups, f.name()) =>
                {
                    Arc::new(f.as_ref().clone().with_data_type(DataType::Dictionary(
                        Box::new(DataType::Int32),
                        Box::new(DataType::Utf8),
                    )))
                }
                DataType::Utf8 | DataType::LargeUtf8 => {
                    Arc::new(f.as_ref().clone().with_data_type(DataType::Utf8View))
                }
                _ => f.clone(),
            })
            .collect::<Vec<_>>(),
    );
    // The runs of rows read, as positions in the share (all of it without a page index).
    let last_column = &on[on.len() - 1];
    let last_is_text = types.last().is_some_and(text)
        && meta
            .schema()
            .field_with_name(last_column)
            .is_ok_and(|f| text(f.data_type()));
    let meta = ArrowReaderMetadata::try_new(
        meta.metadata().clone(),
        indexed.with_schema(Arc::new(viewed)),
    )?;
    let runs = match candidates {
        Some(rows) => Some(share.clip(&runs_from(rows, share.first, share.span))),
        None => last_is_text
            .then(|| pages_of_keys(meta.metadata(), &groups, last_column, wanted))
            .flatten()
            .map(|runs| share.clip(&runs)),
    }
    .or_else(|| (!share.whole()).then(|| vec![(share.from, share.rows)]));
    let builder =
        ParquetRecordBatchStreamBuilder::new_with_metadata(reader, meta).with_row_groups(groups);
    let roots: Vec<usize> = on
        .iter()
        .map(|c| builder.schema().index_of(c))
        .collect::<std::result::Result<_, _>>()?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let (builder, runs) = match runs {
        Some(runs) => {
            tracing::debug!(
                file = %file.path,
                rows = share.rows,
                read = runs.iter().map(|r| r.1).sum::<u64>(),
                dictionary = matches!(
                    builder.schema().field_with_name(last_column).map(|f| f.data_type()),
                    Ok(DataType::Dictionary(..))
                ),
                "key pages"
            );
            if runs.is_empty() {
                return Ok(Lookup::none(wanted));
            }
            let selection = run_selection(&runs);
            (builder.with_row_selection(selection), runs)
        }
        None => (builder, vec![(0, u64::MAX)]),
    };
    let mut runs = runs.into_iter();
    let mut rows = builder.with_projection(mask).build()?;
    let mut found = RoaringTreemap::new();
    let mut shared = vec![false; wanted.lasts.len()];
    let mut buf = Vec::new();
    let mut sorted = Sorted::new(&wanted.lasts);
    // The key value of the last column a row not hit holds (an index into the keys' values).
    let mut shares_last = None;
    // The next row's position in the share, and the rows left in its run.
    let (mut at, mut left) = runs.next().unwrap_or_default();
    while let Some(b) = rows.try_next().await? {
        let mut columns = Vec::with_capacity(on.len());
        for (c, t) in on.iter().zip(types) {
            let c = b.column(b.schema().index_of(c)?);
            columns.push(match c.data_type() {
                DataType::Utf8View if text(t) => c.clone(),
                DataType::Dictionary(k, v)
                    if text(t) && **k == DataType::Int32 && **v == DataType::Utf8 =>
                {
                    c.clone()
                }
                _ => cast(&cast(c, t)?, &DataType::Utf8View)?,
            });
        }
        let columns: Vec<KeyText> = columns.iter().map(KeyText::of).collect();
        let last = &columns[columns.len() - 1];
        let mut hit = false;
        for i in 0..b.num_rows() {
            while left == 0 {
                (at, left) = runs.next().unwrap_or((at, u64::MAX));
            }
            let same = i > 0 && columns.iter().all(|c| c.same_as_before(i));
            if !same {
                // The last column first: most rows' value is no key's, which a merge with the
                // keys' sorted values tells without hashing; the whole row is looked up only
                // when there are more columns, or when the column is not in order.
                (hit, shares_last) = match last.is_null(i) {
                    true => (false, None),
                    false => match sorted.holds(last.value(i)) {
                        Some(false) => (false, None),
                        Some(true) if columns.len() == 1 => (true, None),
                        held => {
                            let hit =
                                KeySet::encode(&columns, i, &mut buf) && wanted.rows.contains(&buf);
                            // Not hit: which of the keys' values the row holds, if any (the
                            // merge's cursor is on it, or it is searched for out of order).
                            let at = match held {
                                _ if hit => None,
                                Some(_) => Some(sorted.at),
                                None => wanted
                                    .lasts
                                    .binary_search_by(|v| v[..].cmp(last.value(i)))
                                    .ok(),
                            };
                            (hit, at)
                        }
                    },
                };
            }
            // Most rows are no key's and hold none of the keys' values: their deletion is not
            // looked up.
            let p = share.first + at;
            if (hit || shares_last.is_some()) && !file.deleted.contains(p) {
                if hit {
                    found.insert(p);
                } else if let Some(k) = shares_last {
                    shared[k] = true;
                }
            }
            at += 1;
            left -= 1;
        }
    }
    Ok(Lookup { found, shared })
}

/// What [`positions_of`] finds in a share of a file: the positions of the rows of the keys,
/// and for each of the keys' last values ([`KeySet::lasts`]) whether a live row holding it is
/// no key's (so the value is left in the file once the rows found are deleted).
struct Lookup {
    found: RoaringTreemap,
    shared: Vec<bool>,
}

impl Lookup {
    fn none(wanted: &KeySet) -> Self {
        Self {
            found: RoaringTreemap::new(),
            shared: vec![false; wanted.lasts.len()],
        }
    }
}

/// The runs of consecutive `rows` (file positions) among the `span` rows from `first`, as
/// (start, length) from `first`.
fn runs_from(rows: &RoaringTreemap, first: u64, span: u64) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let within = rows
        .iter()
        .skip_while(|p| *p < first)
        .take_while(|p| *p < first + span);
    for p in within {
        let at = p - first;
        match runs.last_mut() {
            Some((start, n)) if *start + *n == at => *n += 1,
            _ => runs.push((at, 1)),
        }
    }
    runs
}

/// Membership in sorted distinct values, for values that come mostly in order (a column of a
/// table stored in key order): a cursor moves forward through the values (by doubling steps),
/// and back by a binary search when a value is smaller than the one before. Each value's first
/// eight bytes are kept as a number ([`prefix`]), where most comparisons end without reading
/// the text: the dirty tasks of a 1M incremental job look up some 8M distinct stored keys.
struct Sorted<'a> {
    values: &'a [Vec<u8>],
    prefixes: Vec<u64>,
    /// The first value not below the last one looked up.
    at: usize,
    seeks: u64,
    backs: u64,
}

impl<'a> Sorted<'a> {
    fn new(values: &'a [Vec<u8>]) -> Self {
        Self {
            values,
            prefixes: values.iter().map(|v| prefix(v)).collect(),
            at: 0,
            seeks: 0,
            backs: 0,
        }
    }

    /// Whether value `i` is below `v` (whose prefix is `pv`), in byte order.
    fn below(&self, i: usize, v: &[u8], pv: u64) -> bool {
        match self.prefixes[i].cmp(&pv) {
            std::cmp::Ordering::Equal => self.values[i].as_slice() < v,
            o => o.is_lt(),
        }
    }

    /// The first of values `lo..hi` not below `v` (`hi` when all are).
    fn first_not_below(&self, mut lo: usize, mut hi: usize, v: &[u8], pv: u64) -> usize {
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.below(mid, v, pv) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Whether `v` is one of the values; `None` once the values looked up have gone back more
    /// than once in eight (not in order: a hash lookup is cheaper then).
    fn holds(&mut self, v: &[u8]) -> Option<bool> {
        if self.backs * 8 > self.seeks + 64 {
            return None;
        }
        self.seeks += 1;
        let (pv, n) = (prefix(v), self.values.len());
        if self.at > 0 && !self.below(self.at - 1, v, pv) {
            self.backs += 1;
            self.at = self.first_not_below(0, self.at, v, pv);
        } else {
            // Every value before `at` is below `v`: double the step until one is not. Then
            // every value before `lo` is below `v`, and the one at `hi` (if any) is not.
            let (mut lo, mut step) = (self.at, 1);
            let hi = loop {
                let probe = lo + step - 1;
                if probe >= n {
                    break n;
                }
                if !self.below(probe, v, pv) {
                    break probe;
                }
                lo = probe + 1;
                step *= 2;
            };
            self.at = self.first_not_below(lo, hi, v, pv);
        }
        Some(self.at < n && self.prefixes[self.at] == pv && self.values[self.at].as_slice() == v)
    }
}

/// The first eight bytes of `v` as a big-endian number, zeros after a shorter value: of two
/// values whose prefixes differ, the smaller prefix is the smaller value in byte order (equal
/// prefixes say nothing).
fn prefix(v: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = v.len().min(8);
    bytes[..n].copy_from_slice(&v[..n]);
    u64::from_be_bytes(bytes)
}

/// The runs of rows (start and length, as positions from the first of `groups`) of the pages
/// of column `column` whose bounds in the page index may hold a value of `wanted`'s last
/// column; `None` without a page index for the column (or not a byte array), where every row
/// is read. Pages of NULLs hold no key. Bounds the writer truncated still enclose the page's
/// values (a shorter minimum, a greater maximum). In a table stored in key order, a few
/// thousand keys of a million fall in fewer pages than there are.
fn pages_of_keys(
    meta: &datafusion::parquet::file::metadata::ParquetMetaData,
    groups: &[usize],
    column: &str,
    wanted: &KeySet,
) -> Option<Vec<(u64, u64)>> {
    use datafusion::parquet::file::page_index::column_index::ColumnIndexMetaData;
    let leaf = leaf_of(meta, column)?;
    let (bounds, locations) = (meta.column_index()?, meta.offset_index()?);
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut offset = 0u64;
    for &g in groups {
        let ColumnIndexMetaData::BYTE_ARRAY(index) = bounds.get(g)?.get(leaf)? else {
            return None;
        };
        let pages = locations.get(g)?.get(leaf)?.page_locations();
        let rows = meta.row_group(g).num_rows() as u64;
        for (p, page) in pages.iter().enumerate() {
            let first = page.first_row_index as u64;
            let end = pages.get(p + 1).map_or(rows, |n| n.first_row_index as u64);
            let keep = match (index.min_value(p), index.max_value(p)) {
                (Some(min), Some(max)) => wanted.last_between(min, max),
                _ => !index.is_null_page(p),
            };
            if !keep || end <= first {
                continue;
            }
            match runs.last_mut() {
                Some((s, n)) if *s + *n == offset + first => *n += end - first,
                _ => runs.push((offset + first, end - first)),
            }
        }
        offset += rows;
    }
    Some(runs)
}

/// A row selection of `runs` (start and length, in order).
fn run_selection(runs: &[(u64, u64)]) -> RowSelection {
    let mut selectors = Vec::with_capacity(runs.len() * 2);
    let mut at = 0u64;
    for &(start, len) in runs {
        if start > at {
            selectors.push(RowSelector::skip((start - at) as usize));
        }
        selectors.push(RowSelector::select(len as usize));
        at = start + len;
    }
    RowSelection::from(selectors)
}

/// A key column of a batch, as the lookups read it: text as views, or a dictionary-encoded
/// column chunk as its keys into the dictionary's values.
enum KeyText<'a> {
    Views(&'a StringViewArray),
    Dictionary {
        keys: &'a Int32Array,
        values: &'a StringArray,
    },
}

impl<'a> KeyText<'a> {
    /// `c`, a `Utf8View` array or a dictionary of `Utf8` values with `Int32` keys (what
    /// [`positions_of`] reads and casts to).
    fn of(c: &'a ArrayRef) -> Self {
        match c.as_dictionary_opt::<Int32Type>() {
            Some(d) => KeyText::Dictionary {
                keys: d.keys(),
                values: d.values().as_string::<i32>(),
            },
            None => KeyText::Views(c.as_string_view()),
        }
    }

    fn is_null(&self, i: usize) -> bool {
        match self {
            KeyText::Views(c) => c.is_null(i),
            KeyText::Dictionary { keys, values } => {
                keys.is_null(i) || values.is_null(keys.value(i) as usize)
            }
        }
    }

    /// Row `i`'s bytes (not NULL).
    fn value(&self, i: usize) -> &'a [u8] {
        match self {
            KeyText::Views(c) => c.value(i).as_bytes(),
            KeyText::Dictionary { keys, values } => values.value(keys.value(i) as usize).as_bytes(),
        }
    }

    /// Whether row `i` holds the same value as row `i - 1` (`i > 0`), NULL equal to nothing.
    /// Equal views are equal values (the same inline text, or the same bytes of the same
    /// buffer: a dictionary page decodes each row of a value to one view), as are equal keys
    /// into a dictionary, which spares reading and comparing the text of most rows of a table
    /// stored in key order. (Unequal keys are taken as unequal values: at worst, a row is
    /// looked up again.)
    fn same_as_before(&self, i: usize) -> bool {
        match self {
            KeyText::Views(c) => {
                if c.null_count() > 0 && (c.is_null(i) || c.is_null(i - 1)) {
                    return false;
                }
                let views = c.views();
                let (now, before) = (views[i], views[i - 1]);
                // A view holds a value of up to 12 bytes whole, and a longer one's length and
                // first 4 bytes in its low 64 bits: views unequal there are unequal values.
                now == before
                    || (now as u32 > 12
                        && now as u64 == before as u64
                        && c.value(i) == c.value(i - 1))
            }
            KeyText::Dictionary { keys, .. } => {
                if keys.null_count() > 0 && (keys.is_null(i) || keys.is_null(i - 1)) {
                    return false;
                }
                // A dictionary holds each value once: other keys, other values.
                keys.values()[i] == keys.values()[i - 1]
            }
        }
    }
}

/// Whether every data page of column `column` in row groups `groups` is dictionary-encoded
/// (by the pages' encodings the file's metadata lists), so that reading it as a dictionary
/// decodes no page's text.
fn all_dictionary(
    meta: &datafusion::parquet::file::metadata::ParquetMetaData,
    groups: &[usize],
    column: &str,
) -> bool {
    leaf_of(meta, column).is_some_and(|leaf| {
        groups.iter().all(|&g| {
            let chunk = meta.row_group(g).column(leaf);
            chunk.dictionary_page_offset().is_some()
                && chunk.page_encoding_stats_mask().is_some_and(|mask| {
                    mask.is_only(Encoding::PLAIN_DICTIONARY)
                        || mask.is_only(Encoding::RLE_DICTIONARY)
                })
        })
    })
}

/// The index of top-level column `column` among the file's leaf columns.
fn leaf_of(
    meta: &datafusion::parquet::file::metadata::ParquetMetaData,
    column: &str,
) -> Option<usize> {
    meta.file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .position(|c| c.path().parts() == [column.to_string()])
}

/// Share `(part, parts)` of a file's rows: an equal slice of them (a file of one row group, as
/// most tables' files up to a million rows are, is still read on every core), and the row
/// groups that hold it. Positions in the share's row groups are numbered on from the first's.
struct Share {
    groups: Vec<usize>,
    /// The file position of the first row of `groups`.
    first: u64,
    /// The rows of `groups`.
    span: u64,
    /// The share's rows, as positions from `first`: the ones of `groups` it reads.
    from: u64,
    rows: u64,
}

impl Share {
    /// `None` when the share is empty (more shares than rows).
    fn of(groups: &[RowGroupMetaData], (part, parts): (usize, usize)) -> Option<Self> {
        let total: u64 = groups.iter().map(|g| g.num_rows() as u64).sum();
        let (start, end) = (
            part as u64 * total / parts as u64,
            (part as u64 + 1) * total / parts as u64,
        );
        if start >= end {
            return None;
        }
        let (mut at, mut held, mut first, mut span) = (0u64, Vec::new(), 0u64, 0u64);
        for (g, meta) in groups.iter().enumerate() {
            let rows = meta.num_rows() as u64;
            if at < end && at + rows > start {
                if held.is_empty() {
                    first = at;
                }
                held.push(g);
                span += rows;
            }
            at += rows;
        }
        Some(Self {
            groups: held,
            first,
            span,
            from: start - first,
            rows: end - start,
        })
    }

    /// Whether the share reads every row of its row groups.
    fn whole(&self) -> bool {
        self.from == 0 && self.rows == self.span
    }

    /// `runs` (start and length, from `first`, in order) cut to the share's rows.
    fn clip(&self, runs: &[(u64, u64)]) -> Vec<(u64, u64)> {
        let end = self.from + self.rows;
        runs.iter()
            .filter_map(|&(s, n)| {
                let (s, e) = (s.max(self.from), (s + n).min(end));
                (s < e).then(|| (s, e - s))
            })
            .collect()
    }
}

/// The rows of a data file at `positions` (all columns) within share `(part, parts)` of its
/// row groups.
async fn read_rows(
    objects: &Arc<dyn object_store::ObjectStore>,
    file: &DataFile,
    positions: &RoaringTreemap,
    share: (usize, usize),
) -> std::result::Result<Vec<RecordBatch>, String> {
    let failed = |e: &dyn std::fmt::Display| format!("{}: {e}", file.path);
    let reader = open(objects, file).map_err(|e| failed(&e))?;
    // With the page index, the pages holding no wanted row are not fetched at all.
    let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
    let builder = ParquetRecordBatchStreamBuilder::new_with_options(reader, options)
        .await
        .map_err(|e| failed(&e))?;
    let Some(share) = Share::of(builder.metadata().row_groups(), share) else {
        return Ok(Vec::new());
    };
    let (start, end) = (
        share.first + share.from,
        share.first + share.from + share.rows,
    );
    let wanted: RoaringTreemap = positions
        .iter()
        .skip_while(|p| *p < start)
        .take_while(|p| *p < end)
        .map(|p| p - share.first)
        .collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let rows = builder
        .with_row_groups(share.groups)
        .with_row_selection(selection(&wanted, share.span, true))
        .build()
        .map_err(|e| failed(&e))?;
    rows.try_collect().await.map_err(|e| failed(&e))
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

    /// A Parquet file of `rt`, `owner`, `n` rows in `groups` row groups, in a local store; its
    /// text dictionary-encoded or plain.
    async fn key_file(
        dir: &std::path::Path,
        rows: &[(&str, Option<&str>)],
        group: usize,
        dictionary: bool,
    ) -> (Arc<dyn object_store::ObjectStore>, DataFile) {
        use datafusion::arrow::array::{Int64Array, StringArray};
        use datafusion::arrow::datatypes::Field;
        use datafusion::parquet::arrow::ArrowWriter;
        use datafusion::parquet::file::properties::WriterProperties;
        let schema = Arc::new(Schema::new(vec![
            Field::new("rt", DataType::Utf8, false),
            Field::new("owner", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter(rows.iter().map(|r| r.1))),
                Arc::new(Int64Array::from_iter_values(0..rows.len() as i64)),
            ],
        )
        .unwrap();
        // Pages of two rows, so that lookups rule out pages by their bounds.
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(group))
            .set_data_page_row_count_limit(2)
            .set_write_batch_size(2)
            .set_dictionary_enabled(dictionary)
            .build();
        let mut bytes = Vec::new();
        let mut w = ArrowWriter::try_new(&mut bytes, schema, Some(props)).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        std::fs::write(dir.join("keys.parquet"), &bytes).unwrap();
        let objects: Arc<dyn object_store::ObjectStore> =
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir).unwrap());
        let file = DataFile {
            path: object_store::path::Path::from("keys.parquet"),
            size: bytes.len() as u64,
            deleted: RoaringTreemap::new(),
            records: rows.len() as u64,
        };
        (objects, file)
    }

    fn keys(rows: &[(&str, Option<&str>)]) -> KeySet {
        use datafusion::arrow::array::StringArray;
        let b = RecordBatch::try_from_iter(vec![
            (
                "a",
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))) as _,
            ),
            (
                "b",
                Arc::new(StringArray::from_iter(rows.iter().map(|r| r.1))) as _,
            ),
        ])
        .unwrap();
        KeySet::of(&[b]).unwrap()
    }

    /// `(rt, owner)` rows in key order, with runs of one owner, a NULL owner and two resource
    /// types.
    const ROWS: [(&str, Option<&str>); 11] = [
        ("a", Some("o1")),
        ("a", Some("o1")),
        ("a", Some("o2")),
        ("a", Some("o2")),
        ("a", Some("o2")),
        ("a", Some("o3")),
        ("a", None),
        ("b", Some("o1")),
        ("b", Some("o2")),
        ("b", Some("o2")),
        ("b", Some("o30")),
    ];

    fn keys1(values: &[&str]) -> KeySet {
        use datafusion::arrow::array::StringArray;
        let b = RecordBatch::try_from_iter(vec![(
            "k",
            Arc::new(StringArray::from_iter_values(values.iter())) as _,
        )])
        .unwrap();
        KeySet::of(&[b]).unwrap()
    }

    #[tokio::test]
    async fn the_rows_of_the_replaced_keys_are_found_in_every_share_of_the_row_groups() {
        // Text read as a dictionary's keys (every page dictionary-encoded), and as views.
        for dictionary in [true, false] {
            replaced_keys_found(dictionary).await;
        }
    }

    async fn replaced_keys_found(dictionary: bool) {
        let dir = tempfile::tempdir().unwrap();
        // 3-row groups, so runs cross group and share boundaries.
        let (objects, mut file) = key_file(dir.path(), &ROWS, 3, dictionary).await;
        let mut reader = open(&objects, &file).unwrap();
        let meta = ArrowReaderMetadata::load_async(&mut reader, ArrowReaderOptions::new())
            .await
            .unwrap();
        for column in ["rt", "owner"] {
            assert_eq!(
                all_dictionary(meta.metadata(), &[0, 1, 2, 3], column),
                dictionary,
                "{column}"
            );
        }
        // `a`/`o2` and `b`/`o1`; a NULL key matches nothing, and `o3` is not `o30`'s prefix.
        let wanted = keys(&[
            ("a", Some("o2")),
            ("b", Some("o1")),
            ("a", None),
            ("b", Some("o3")),
        ]);
        let on = ["rt".to_string(), "owner".to_string()];
        let types = [DataType::Utf8, DataType::Utf8];
        let found = |file: DataFile, parts: usize| {
            let (objects, on, types) = (objects.clone(), on.clone(), types.clone());
            let wanted = &wanted;
            async move {
                let mut all = RoaringTreemap::new();
                for part in 0..parts {
                    all |= positions_of(&objects, &file, (part, parts), &on, &types, wanted, None)
                        .await
                        .unwrap()
                        .found;
                }
                all.iter().collect::<Vec<u64>>()
            }
        };
        let whole = file.clone();
        for parts in [1, 2, 3, 4, 7] {
            assert_eq!(
                found(whole.clone(), parts).await,
                vec![2, 3, 4, 7],
                "{parts} share(s), dictionary {dictionary}"
            );
        }
        // Only candidate rows read, as a key index gives them: every row holding one of the
        // keys' owners (`o1`, `o2`, `o3`), and a row of another (`o30`, as a hash two values
        // share would give). The same rows are found in every share; rows left out of the
        // candidates are not read (row 2 left out: not found).
        let with_candidates = |candidates: Vec<u64>, parts: usize| {
            let (objects, on, types, file) =
                (objects.clone(), on.clone(), types.clone(), whole.clone());
            let wanted = &wanted;
            async move {
                let candidates: RoaringTreemap = candidates.into_iter().collect();
                let mut all = RoaringTreemap::new();
                for part in 0..parts {
                    let share = (part, parts);
                    let c = Some(&candidates);
                    all |= positions_of(&objects, &file, share, &on, &types, wanted, c)
                        .await
                        .unwrap()
                        .found;
                }
                all.iter().collect::<Vec<u64>>()
            }
        };
        let candidates = vec![0, 1, 2, 3, 4, 5, 7, 8, 9, 10];
        for parts in [1, 2, 3, 7] {
            assert_eq!(
                with_candidates(candidates.clone(), parts).await,
                vec![2, 3, 4, 7],
                "{parts} share(s) of candidates, dictionary {dictionary}"
            );
        }
        assert_eq!(with_candidates(vec![0, 1, 3, 4, 7], 2).await, vec![3, 4, 7]);
        // The owner alone: runs of one owner cross the resource types (`o1` of `a`, then of
        // `b` after a NULL), and a NULL owner matches nothing.
        let on1 = ["owner".to_string()];
        let got = positions_of(
            &objects,
            &whole,
            (0, 1),
            &on1,
            &[DataType::Utf8],
            &keys1(&["o1", "o30"]),
            None,
        )
        .await
        .unwrap();
        assert_eq!(got.found.iter().collect::<Vec<u64>>(), vec![0, 1, 7, 10]);
        // Keys on one column hold every row of their value: none is left to other rows.
        assert_eq!(got.shared, vec![false, false]);
        // Which of the keys' owners other live rows hold, whatever the shares: `o2` (of `b`),
        // not `o3` or `o30` (each one key's only row); once `b`/`o2`'s rows are deleted, none.
        let cleared = keys(&[("a", Some("o3")), ("b", Some("o30")), ("a", Some("o2"))]);
        let shared = |file: DataFile, parts: usize| {
            let (objects, on, types, cleared) =
                (objects.clone(), on.clone(), types.clone(), &cleared);
            async move {
                let mut shared = vec![false; cleared.lasts.len()];
                for part in 0..parts {
                    let got =
                        positions_of(&objects, &file, (part, parts), &on, &types, cleared, None)
                            .await
                            .unwrap();
                    shared.iter_mut().zip(got.shared).for_each(|(s, g)| *s |= g);
                }
                shared
            }
        };
        assert_eq!(
            cleared.lasts,
            vec![b"o2".to_vec(), b"o3".to_vec(), b"o30".to_vec()]
        );
        for parts in [1, 2, 3, 7] {
            assert_eq!(shared(whole.clone(), parts).await, vec![true, false, false]);
        }
        // The same from the candidate rows of a key index (the rows holding the three owners).
        let candidates: RoaringTreemap = [2u64, 3, 4, 5, 8, 9, 10].into_iter().collect();
        let got = positions_of(
            &objects,
            &whole,
            (0, 1),
            &on,
            &types,
            &cleared,
            Some(&candidates),
        )
        .await
        .unwrap();
        assert_eq!(got.shared, vec![true, false, false]);
        let mut without_b_o2 = whole.clone();
        without_b_o2.deleted.extend([8u64, 9]);
        assert_eq!(shared(without_b_o2, 2).await, vec![false, false, false]);
        // A row deleted by an earlier patch is not found again.
        file.deleted.insert(3);
        assert_eq!(found(file, 2).await, vec![2, 4, 7]);
        // Keys of another type are compared as that type: `n` 0..10 read as text.
        let on = ["n".to_string()];
        let b = RecordBatch::try_from_iter(vec![(
            "k",
            Arc::new(datafusion::arrow::array::Int64Array::from(vec![5, 9, 99])) as _,
        )])
        .unwrap();
        let wanted = KeySet::of(&[b]).unwrap();
        let got = positions_of(
            &objects,
            &whole,
            (0, 1),
            &on,
            &[DataType::Int64],
            &wanted,
            None,
        )
        .await
        .unwrap();
        assert_eq!(got.found.iter().collect::<Vec<u64>>(), vec![5, 9]);
    }

    #[test]
    fn sorted_values_answer_as_a_set_in_any_order() {
        // Short values, and values that share their first eight bytes (the numeric prefix
        // compared first) or hold zero bytes (a shorter value's prefix is padded with zeros).
        let mut values: Vec<Vec<u8>> = [
            "b",
            "d",
            "d0",
            "f",
            "h",
            "k",
            "m",
            "p",
            "s",
            "w",
            "CN=Alpha,OU=x",
            "CN=Alpha,OU=y",
            "CN=Alph",
            "g\0",
            "g\0\0z",
        ]
        .iter()
        .map(|v| v.as_bytes().to_vec())
        .collect();
        values.sort();
        let probes: Vec<&[u8]> = [
            "",
            "a",
            "b",
            "c",
            "d",
            "d0",
            "d00",
            "e",
            "f",
            "g",
            "g\0",
            "g\0\0",
            "g\0\0z",
            "g\0\0z\0",
            "h",
            "w",
            "x",
            "CN=Alph",
            "CN=Alpha",
            "CN=Alpha,OU=x",
            "CN=Alpha,OU=xx",
            "CN=Alpha,OU=y",
            "CN=Alpha,OU=",
        ]
        .iter()
        .map(|v| v.as_bytes())
        .collect();
        // In order (with repeats), backwards, and scrambled.
        let mut ascending: Vec<&[u8]> = probes.iter().flat_map(|p| [*p, *p]).collect();
        ascending.sort();
        let backwards: Vec<&[u8]> = ascending.iter().rev().copied().collect();
        let scrambled: Vec<&[u8]> = (0..400)
            .map(|i| probes[(i * 7 + i / 13) % probes.len()])
            .collect();
        for (name, order) in [
            ("ascending", &ascending),
            ("backwards", &backwards),
            ("scrambled", &scrambled),
        ] {
            let mut sorted = Sorted::new(&values);
            let mut gave_up = false;
            for v in order.iter() {
                let truth = values.iter().any(|x| x.as_slice() == *v);
                match sorted.holds(v) {
                    Some(held) => {
                        assert!(!gave_up, "{name}: answers again after giving up");
                        assert_eq!(held, truth, "{name}: {:?}", String::from_utf8_lossy(v));
                    }
                    None => gave_up = true,
                }
            }
            // In order, the merge never gives up; long out of order, it does.
            match name {
                "ascending" => assert!(!gave_up),
                "scrambled" => assert!(gave_up),
                _ => {}
            }
        }
        assert_eq!(Sorted::new(&[]).holds(b"a"), Some(false));
    }

    #[tokio::test]
    async fn pages_whose_bounds_hold_no_key_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        // Two-row pages of `owner`: [o1 o1] [o2 o2] [o2 o3] [NULL o1] [o2 o2] [o30], in
        // row groups of four rows.
        let (objects, file) = key_file(dir.path(), &ROWS, 4, true).await;
        let wanted = keys1(&["o3"]);
        let mut reader = open(&objects, &file).unwrap();
        let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Required);
        let meta = ArrowReaderMetadata::load_async(&mut reader, options)
            .await
            .unwrap();
        let meta = meta.metadata();
        // Only the page from o2 to o3 may hold `o3` (`o30` sorts after it).
        assert_eq!(
            pages_of_keys(meta, &[0, 1, 2], "owner", &wanted),
            Some(vec![(4, 2)])
        );
        // Positions are counted from the share's first group.
        assert_eq!(
            pages_of_keys(meta, &[1, 2], "owner", &wanted),
            Some(vec![(0, 2)])
        );
        assert_eq!(pages_of_keys(meta, &[2], "owner", &wanted), Some(vec![]));
        // `rt` holds `a` and `b` only: no page may hold `o3`.
        assert_eq!(pages_of_keys(meta, &[0, 1, 2], "rt", &wanted), Some(vec![]));
        // Adjacent pages read are one run, across groups too.
        let wanted = keys1(&["o2", "o30"]);
        assert_eq!(
            pages_of_keys(meta, &[0, 1, 2], "owner", &wanted),
            Some(vec![(2, 4), (8, 3)])
        );
        // Not a byte array: no page index to go by.
        assert_eq!(pages_of_keys(meta, &[0, 1, 2], "n", &wanted), None);

        // The lookup finds the same rows as a read of every page, in every share.
        let on = ["owner".to_string()];
        let types = [DataType::Utf8];
        for (wanted, expected) in [
            (vec!["o3"], vec![5]),
            (vec!["o1", "o30"], vec![0, 1, 7, 10]),
            (vec!["o2"], vec![2, 3, 4, 8, 9]),
            (vec!["o0", "o4"], vec![]),
        ] {
            let wanted = keys1(&wanted);
            for parts in [1, 2, 3] {
                let mut all = RoaringTreemap::new();
                for part in 0..parts {
                    all |= positions_of(&objects, &file, (part, parts), &on, &types, &wanted, None)
                        .await
                        .unwrap()
                        .found;
                }
                assert_eq!(
                    all.iter().collect::<Vec<u64>>(),
                    expected,
                    "{parts} share(s)"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_file_of_one_row_group_is_shared_by_rows() {
        let dir = tempfile::tempdir().unwrap();
        // One row group of 11 rows, two-row pages: every share but the first starts inside
        // the group, most of them inside a page.
        let (objects, file) = key_file(dir.path(), &ROWS, ROWS.len(), true).await;
        let mut reader = open(&objects, &file).unwrap();
        let meta = ArrowReaderMetadata::load_async(&mut reader, ArrowReaderOptions::new())
            .await
            .unwrap();
        let groups = meta.metadata().row_groups();
        assert_eq!(groups.len(), 1);
        // Shares of equal rows, one after another, that cover the file once.
        for parts in [1usize, 2, 3, 5, 11, 12] {
            let shares: Vec<(u64, u64)> = (0..parts)
                .filter_map(|part| Share::of(groups, (part, parts)))
                .map(|s| (s.first + s.from, s.rows))
                .collect();
            assert_eq!(shares.len(), parts.min(ROWS.len()), "{parts} shares");
            let mut at = 0;
            for (start, rows) in shares {
                assert_eq!(start, at, "{parts} shares");
                assert!(rows >= (ROWS.len() / parts) as u64);
                at += rows;
            }
            assert_eq!(at, ROWS.len() as u64);
        }
        let on = ["owner".to_string()];
        let types = [DataType::Utf8];
        let wanted = keys1(&["o2", "o30"]);
        let positions: RoaringTreemap = [2u64, 3, 4, 8, 9, 10].into_iter().collect();
        for parts in [1, 2, 3, 5, 11] {
            // Each row is looked up in one share: the rows of `o2` and `o30` found once.
            let mut found = Vec::new();
            let mut read = Vec::new();
            for part in 0..parts {
                let got = positions_of(&objects, &file, (part, parts), &on, &types, &wanted, None)
                    .await
                    .unwrap();
                found.extend(got.found.iter());
                for b in read_rows(&objects, &file, &positions, (part, parts))
                    .await
                    .unwrap()
                {
                    let n = b.column(b.schema().index_of("n").unwrap()).clone();
                    read.extend(
                        n.as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                            .values()
                            .iter()
                            .copied(),
                    );
                }
            }
            assert_eq!(found, vec![2, 3, 4, 8, 9, 10], "{parts} share(s)");
            // The rows at the positions, each read once, in order.
            assert_eq!(read, vec![2, 3, 4, 8, 9, 10], "{parts} share(s)");
        }
    }

    #[test]
    fn keys_without_cleared_values_keep_the_others_whole() {
        let set = keys(&[
            ("a", Some("o1")),
            ("b", Some("o1")),
            ("a", Some("o2")),
            ("b", Some("o30")),
        ]);
        let mut buf = Vec::new();
        let a = StringViewArray::from(vec!["ab"]);
        let b = StringViewArray::from(vec!["o30"]);
        assert!(KeySet::encode(
            &[KeyText::Views(&a), KeyText::Views(&b)],
            0,
            &mut buf
        ));
        assert_eq!(KeySet::last_of(&buf), b"o30");
        let rest = set.without(&[b"o1".to_vec(), b"o3".to_vec()]);
        assert_eq!(rest.lasts, vec![b"o2".to_vec(), b"o30".to_vec()]);
        let mut lasts: Vec<&[u8]> = rest.rows.iter().map(|r| KeySet::last_of(r)).collect();
        lasts.sort();
        assert_eq!(lasts, vec![&b"o2"[..], &b"o30"[..]]);
        assert!(set.without(&set.lasts).rows.is_empty());

        let cleared = Cleared {
            column: "owner_key".into(),
            last_type: DataType::Utf8,
            values: vec![],
            files: Default::default(),
        };
        assert!(cleared.applies_to(&["owner_key"], &[DataType::Utf8View]));
        assert!(cleared.applies_to(
            &["resource_type", "owner_key"],
            &[DataType::Utf8, DataType::Utf8]
        ));
        assert!(!cleared.applies_to(&["account_key"], &[DataType::Utf8]));
        assert!(!cleared.applies_to(&["owner_key"], &[DataType::Int64]));
    }
}
