//! Writing one table's next Delta version (step 1 of a store commit, see the module above).

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::datasource::provider_as_source;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::LogicalPlanBuilder;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use datafusion::parquet::schema::types::ColumnPath;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use deltalake::datafile::writer::{DeltaWriter, WriterConfig};
use deltalake::kernel::Action;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::DeltaOperation;
use deltalake::protocol::SaveMode;

use super::{Catalog, Store};
use crate::error::{Error, Result};

/// Turns a batch into the rows to write (applied while the table is written).
pub type BatchMap =
    Arc<dyn Fn(&RecordBatch) -> datafusion::error::Result<RecordBatch> + Send + Sync>;

/// A table's rows to write: `batches`, each through `map` when there is one (rows derived
/// from others, such as a first load's history from the new state, are then never all held
/// at once). `schema` is the table's.
pub struct Rows {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub map: Option<BatchMap>,
}

/// The rows to write as one partition of a streaming table: each batch mapped and aligned to
/// the schema when the writer asks for it.
struct LazyRows {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    map: Option<BatchMap>,
}

impl std::fmt::Debug for LazyRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyRows")
            .field("batches", &self.batches.len())
            .field("mapped", &self.map.is_some())
            .finish()
    }
}

impl PartitionStream for LazyRows {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let (schema, map) = (self.schema.clone(), self.map.clone());
        let rows = self.batches.clone().into_iter().map(move |b| {
            let b = match &map {
                Some(m) => m(&b)?,
                None => b,
            };
            crate::engine::cast_batch(&b, &schema)
        });
        Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            futures::stream::iter(rows),
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// The batches are the table's whole new content.
    Overwrite,
    /// The batches are added to the committed content.
    Append,
}

impl Store {
    /// Writes the next Delta version of `name` and returns it; not visible until committed to
    /// the catalog. `schema` is the table's schema (used when there are no rows).
    pub async fn write_table(
        &self,
        catalog: &Catalog,
        name: &str,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
        mode: WriteMode,
        run_id: &str,
    ) -> Result<u64> {
        let rows = Rows {
            schema,
            batches,
            map: None,
        };
        self.write_rows(catalog, name, rows, mode, run_id).await
    }

    /// [`Store::write_table`] of [`Rows`]: their batches are mapped and aligned to the
    /// table's schema one at a time, as the writer takes them.
    pub async fn write_rows(
        &self,
        catalog: &Catalog,
        name: &str,
        rows: Rows,
        mode: WriteMode,
        run_id: &str,
    ) -> Result<u64> {
        let started = std::time::Instant::now();
        let schema = nullable(&rows.schema);
        let in_table =
            |e: datafusion::error::DataFusionError| Error::store(format!("table {name}: {e}"));
        let mut map = rows.map;
        let mut batches: Vec<RecordBatch> = rows
            .batches
            .into_iter()
            .filter(|b| b.num_rows() > 0)
            .collect();
        let committed = catalog.tables.get(name).copied();
        let latest = self.delta_latest(name).await?;
        let mut mode = mode;
        if mode == WriteMode::Append && latest.version() != committed {
            // Uncommitted versions from a killed run sit on top: rebuild from the committed state.
            if let Some(v) = committed {
                // The committed rows are not mapped: map the new ones now.
                if let Some(m) = map.take() {
                    batches = batches
                        .iter()
                        .map(|b| m(b))
                        .collect::<std::result::Result<_, _>>()
                        .map_err(in_table)?;
                }
                let ctx = crate::engine::context();
                let table = self.delta_at(name, v).await?;
                table.update_datafusion_session(&ctx.state())?;
                let provider = table.table_provider().await?;
                let old = ctx.read_table(provider)?.collect().await?;
                let mut all: Vec<RecordBatch> = Vec::with_capacity(old.len() + batches.len());
                for b in old {
                    all.push(crate::engine::cast_batch(&b, &schema)?);
                }
                all.append(&mut batches);
                batches = all;
            }
            mode = WriteMode::Overwrite;
        }
        if batches.is_empty() {
            // No rows: an empty batch of the table's own schema, so that the table has it.
            map = None;
            batches.push(RecordBatch::new_empty(schema.clone()));
        }
        let props = CommitProperties::default().with_metadata(super::run_metadata(run_id));
        let save = match mode {
            WriteMode::Overwrite => SaveMode::Overwrite,
            WriteMode::Append => SaveMode::Append,
        };
        // Written whole: the batches are the table's rows as they are stored.
        let whole = mode == WriteMode::Overwrite && map.is_none();
        // Whole tables named parallel: the rows before the last part, in parts of their own,
        // each written to a data file on its own task beside the last.
        let parts = match self.parallel.get(name) {
            Some(&min) if whole => split_off_parts(&mut batches, crate::engine::threads(), min),
            _ => Vec::new(),
        };
        // Key indexes of a table written whole, built beside the writer from the same rows (in
        // the order written), one per part (the last last), and kept for the file of each.
        let indexed = self.indexed.get(name).cloned().unwrap_or_default();
        let rows = |part: &[RecordBatch]| part.iter().map(|b| b.num_rows() as u64).sum::<u64>();
        let indexes = (whole && !indexed.is_empty() && rows(&batches) > 0).then(|| {
            let all: Vec<Vec<RecordBatch>> = parts.iter().chain([&batches]).cloned().collect();
            tokio::task::spawn_blocking(move || {
                all.iter()
                    .map(|part| {
                        let built = indexed
                            .iter()
                            .filter_map(|c| {
                                super::key_index::build(part, c).map(|b| (c.clone(), b))
                            })
                            .collect::<Vec<_>>();
                        (rows(part), built)
                    })
                    .collect::<Vec<_>>()
            })
        });
        // One partition, so that the rows are written in their order.
        let source = LazyRows {
            schema: schema.clone(),
            batches,
            map,
        };
        let source =
            StreamingTable::try_new(schema.clone(), vec![Arc::new(source)]).map_err(in_table)?;
        let plan = LogicalPlanBuilder::scan(name, provider_as_source(Arc::new(source)), None)
            .and_then(LogicalPlanBuilder::build)
            .map_err(in_table)?;
        // The writer's session keeps that one partition: with several (round-robin
        // repartitioning), it interleaves them.
        let mut session = deltalake::delta_datafusion::create_session().state();
        session
            .config_mut()
            .options_mut()
            .optimizer
            .enable_round_robin_repartition = false;
        // Parquet's defaults, compressed with LZ4 (the `LZ4_RAW` codec, which DuckDB, Spark
        // 3.3+, pyarrow and delta-rs read), not the session's (zstd), which delta-rs would use
        // for writer properties it is not given. LZ4 decompresses about twice as fast as
        // Snappy, which was 15% of a dirty job's CPU (its key lookups and row reads decode
        // whole columns): at 1M identities the incremental job took 0.1–0.4 s (3–12%) less in
        // nine interleaved pairs, the complete job no more, the store the same size
        // (BENCHMARKS.md, thirty-sixth pass). Files written with Snappy read as before.
        let mut writer = WriterProperties::builder().set_compression(Compression::LZ4_RAW);
        for column in self.repeated.get(name).into_iter().flatten() {
            writer = writer.set_column_dictionary_page_size_limit(
                ColumnPath::from(column.as_str()),
                super::REPEATED_DICTIONARY_BYTES,
            );
        }
        for column in self.unordered.get(name).into_iter().flatten() {
            writer = writer.set_column_statistics_enabled(
                ColumnPath::from(column.as_str()),
                EnabledStatistics::None,
            );
        }
        let writer = writer.build();
        let written_parts = write_parts(&latest, &schema, &writer, parts);
        let schema_before = latest.snapshot().ok().map(|s| s.schema());
        let mut builder = latest
            .write(Vec::new())
            .with_writer_properties(writer)
            .with_input_plan(plan)
            .with_session_state(Arc::new(session))
            .with_save_mode(save)
            .with_commit_properties(props);
        if mode == WriteMode::Overwrite {
            builder = builder.with_schema_mode(SchemaMode::Overwrite);
        }
        let (table, adds) =
            futures::try_join!(async { Ok::<_, Error>(builder.await?) }, written_parts)?;
        // The data file of each part before the last (one each, unless the writer rolled).
        let part_files: Vec<Option<String>> = adds
            .iter()
            .map(|a| match a.as_slice() {
                [one] => Some(one.path.clone()),
                _ => None,
            })
            .collect();
        let mut version = table.version();
        let mut snapshot = table.snapshot()?.clone();
        if !adds.is_empty() {
            crate::tasks::failpoint(&format!("write.{name}.parts"));
        }
        // The parts before the last, each committed on its own, from the last but one to the
        // first: a scan lists the files of the newest version first, so the table reads in
        // the order written (`parallel_parts_read_back_in_order`).
        for adds in adds.into_iter().rev() {
            let commit = CommitBuilder::default()
                .with_actions(adds.into_iter().map(Action::Add).collect())
                .with_app_metadata(super::run_metadata(run_id))
                .build(
                    Some(&snapshot),
                    table.log_store(),
                    DeltaOperation::Write {
                        mode: SaveMode::Append,
                        partition_by: None,
                        predicate: None,
                    },
                )
                .await?;
            version = Some(commit.version());
            snapshot = commit.snapshot();
        }
        if let Some(indexes) = indexes {
            let indexes = indexes
                .await
                .map_err(|e| Error::store(format!("table {name}: key index: {e}")))?;
            let mut table = table.clone();
            if let Some(v) = version.filter(|v| Some(*v) != table.version()) {
                table.load_version(v).await?;
            }
            self.write_key_indexes(name, &table, &part_files, indexes)
                .await?;
        }
        tracing::debug!(
            table = name,
            seconds = format!("{:.3}", started.elapsed().as_secs_f64()),
            "table written"
        );
        // A new schema (a column retyped in pipeline.toml): a checkpoint at this version, so
        // that loading the table does not replay the older files' statistics against the new
        // types (the Delta kernel warns about each of them on every later read).
        // (At the last part's version when there are more: a checkpoint of any version
        // spares the replay of the files before it.)
        if schema_before
            .is_some_and(|before| Some(before) != table.snapshot().ok().map(|s| s.schema()))
        {
            deltalake::checkpoints::create_checkpoint(&table, None).await?;
        }
        version
            .ok_or_else(|| Error::store(format!("table {name}: Delta write returned no version")))
    }

    /// Writes the key indexes of each part (rows, (column, index)…; the last part's last) of
    /// `table`'s new version beside its data file: `part_files` names the files of the parts
    /// before the last (`None`: not one file), the last is the one file left. Each is kept only
    /// for a file of as many rows, none deleted.
    async fn write_key_indexes(
        &self,
        name: &str,
        table: &deltalake::DeltaTable,
        part_files: &[Option<String>],
        indexes: Vec<PartIndexes>,
    ) -> Result<()> {
        use object_store::ObjectStoreExt;
        let Some(files) = super::patch::active_files(self, name, table).await? else {
            return Ok(());
        };
        let named = |f: &super::patch::ActiveFile| {
            let file_name = f.file.path.filename();
            part_files
                .iter()
                .position(|p| p.as_deref().is_some_and(|p| Some(p) == file_name))
        };
        let last: Vec<_> = files.iter().filter(|f| named(f).is_none()).collect();
        for (i, (rows, built)) in indexes.into_iter().enumerate() {
            let file = match i < part_files.len() {
                true => files.iter().find(|f| named(f) == Some(i)),
                false => match last.as_slice() {
                    [one] => Some(*one),
                    _ => None,
                },
            };
            let Some(file) = file.filter(|f| f.records == rows && f.file.deleted.is_empty()) else {
                continue;
            };
            for (column, bytes) in built {
                let path = super::key_index::path_of(self, name, &file.file.path, &column);
                self.objects
                    .put(&path, bytes.into())
                    .await
                    .map_err(|e| Error::store(format!("writing {path}: {e}")))?;
            }
        }
        Ok(())
    }
}

/// A part's rows and the key indexes (column, index) built from them.
type PartIndexes = (u64, Vec<(String, Vec<u8>)>);

/// Splits the rows before the last part off `batches`: up to `parts` parts in all, of about
/// the same rows and at least `min` each (at batch boundaries, in order); `batches` keeps the
/// last. None when the rows make one part.
fn split_off_parts(
    batches: &mut Vec<RecordBatch>,
    parts: usize,
    min: usize,
) -> Vec<Vec<RecordBatch>> {
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let parts = parts.min(rows / min.max(1)).max(1);
    if parts < 2 {
        return Vec::new();
    }
    let per_part = rows.div_ceil(parts);
    let mut out: Vec<Vec<RecordBatch>> = Vec::with_capacity(parts);
    let mut part = Vec::new();
    let mut in_part = 0;
    for b in std::mem::take(batches) {
        in_part += b.num_rows();
        part.push(b);
        if in_part >= per_part && out.len() + 1 < parts {
            out.push(std::mem::take(&mut part));
            in_part = 0;
        }
    }
    // A batch longer than a part can leave nothing after the parts before it: the last of
    // them is then the last part.
    *batches = match part.is_empty() {
        true => out.pop().unwrap_or_default(),
        false => part,
    };
    out
}

/// Writes each of `parts` to a data file of `table` on a task of its own, and returns each
/// part's Add actions, in part order (committed by the caller).
fn write_parts(
    table: &deltalake::DeltaTable,
    schema: &SchemaRef,
    properties: &WriterProperties,
    parts: Vec<Vec<RecordBatch>>,
) -> impl std::future::Future<Output = Result<Vec<Vec<deltalake::kernel::Add>>>> + use<> {
    let objects = table.log_store().object_store(None);
    let tasks: Vec<_> = parts
        .into_iter()
        .map(|part| {
            let config = WriterConfig::new(
                schema.clone(),
                Vec::new(),
                Some(properties.clone()),
                None,
                None,
                // The table's own statistics settings: igaflow sets none.
                Default::default(),
                None,
            );
            let (objects, schema) = (objects.clone(), schema.clone());
            tokio::spawn(async move {
                let mut writer = DeltaWriter::new(objects, config);
                for b in part {
                    let b = crate::engine::cast_batch(&b, &schema)?;
                    if let Err(e) = writer.write(&b).await {
                        let _ = writer.abort().await;
                        return Err(Error::from(e));
                    }
                }
                Ok(writer.close().await?)
            })
        })
        .collect();
    async move {
        futures::future::try_join_all(tasks)
            .await
            .map_err(|e| Error::store(format!("writing a table part: {e}")))?
            .into_iter()
            .collect()
    }
}

/// Delta tables here are all-nullable: a NOT NULL flag that DataFusion infers for one run's
/// data must not make the next run's append fail. View types (which a Parquet scan may
/// produce) and dictionaries (`engine::sorted_distinct`'s) are stored as their plain forms, so
/// a table keeps one schema.
pub(crate) fn nullable(schema: &SchemaRef) -> SchemaRef {
    use datafusion::arrow::datatypes::DataType;
    Arc::new(Schema::new(
        crate::engine::decoded_schema(schema)
            .fields()
            .iter()
            .map(|f| {
                let ty = match f.data_type() {
                    DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
                    DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
                    other => other.clone(),
                };
                Field::new(f.name(), ty, true)
            })
            .collect::<Vec<_>>(),
    ))
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{AsArray, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Int64Type};
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use std::collections::HashMap;

    use super::*;

    /// Mapped batches are written in their order (one partition end to end), each with the
    /// columns its map adds, and an empty input still creates the table with its schema.
    #[tokio::test]
    async fn mapped_rows_are_written_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap()).unwrap();
        let catalog = store.catalog().await.unwrap();
        let input = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Utf8, true),
        ]));
        // Not in any sorted order, and more batches than a writer session has partitions.
        let values: Vec<i64> = (0..20_000).map(|i| (i * 7919) % 20_011).collect();
        let batches: Vec<RecordBatch> = values
            .chunks(1000)
            .map(|c| {
                RecordBatch::try_new(input.clone(), vec![Arc::new(Int64Array::from(c.to_vec()))])
                    .unwrap()
            })
            .collect();
        let out = schema.clone();
        let map: BatchMap = Arc::new(move |b: &RecordBatch| {
            let a = b.column(0).as_primitive::<Int64Type>();
            let text = StringArray::from_iter_values(a.values().iter().map(|v| format!("x{v}")));
            Ok(RecordBatch::try_new(
                out.clone(),
                vec![b.column(0).clone(), Arc::new(text)],
            )?)
        });
        let rows = Rows {
            schema: schema.clone(),
            batches,
            map: Some(map.clone()),
        };
        store
            .write_rows(&catalog, "t", rows, WriteMode::Overwrite, "run")
            .await
            .unwrap();
        let read = |table: &str| {
            let mut files: Vec<_> = std::fs::read_dir(dir.path().join(table))
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
                .collect();
            files.sort();
            files
                .into_iter()
                .flat_map(|f| {
                    ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(f).unwrap())
                        .unwrap()
                        .build()
                        .unwrap()
                        .map(|b| b.unwrap())
                })
                .collect::<Vec<_>>()
        };
        let written = read("t");
        let a: Vec<i64> = written
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect();
        assert_eq!(a, values, "rows in their order");
        let b = written[0].column(1).as_string::<i32>();
        assert_eq!(b.value(0), format!("x{}", values[0]));
        assert_eq!(written[0].schema().field(1).name(), "b");

        let rows = Rows {
            schema: schema.clone(),
            batches: Vec::new(),
            map: Some(map),
        };
        store
            .write_rows(&catalog, "empty", rows, WriteMode::Overwrite, "run")
            .await
            .unwrap();
        let table = store.delta_latest("empty").await.unwrap();
        let fields: Vec<String> = table
            .snapshot()
            .unwrap()
            .schema()
            .fields()
            .map(|f| f.name().to_string())
            .collect();
        assert_eq!(fields, ["a", "b"]);
        assert!(read("empty").iter().all(|b| b.num_rows() == 0));
    }

    /// A repeated column keeps its dictionary past Parquet's 1 MiB default (where it would
    /// fall back to plain values); a column not named keeps the default and falls back. An
    /// unordered column has no statistics.
    #[tokio::test]
    async fn repeated_columns_stay_dictionary_encoded() {
        use datafusion::parquet::basic::{Compression, Encoding, PageType};
        use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};

        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap())
            .unwrap()
            .with_repeated_columns([("links".to_string(), vec!["account".to_string()])].into())
            .with_unordered_columns([("links".to_string(), vec!["group".to_string()])].into());
        let catalog = store.catalog().await.unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("account", DataType::Utf8, true),
            Field::new("group", DataType::Utf8, true),
        ]));
        // 40,000 accounts of about 60 bytes (2.4 MB of distinct values), each in two groups
        // named alike: both columns hold 40,000 distinct values.
        let name = |i: usize| format!("CN=Account {i:06},OU=Users,DC=corp,DC=example,DC=com");
        let batches: Vec<RecordBatch> = (0..40_000usize)
            .collect::<Vec<_>>()
            .chunks(4000)
            .map(|c| {
                let accounts = c.iter().flat_map(|&i| [name(i), name(i)]);
                let groups = c.iter().flat_map(|&i| [name(i), name(i + 40_000)]);
                RecordBatch::try_new(
                    schema.clone(),
                    vec![
                        Arc::new(StringArray::from_iter_values(accounts)),
                        Arc::new(StringArray::from_iter_values(groups)),
                    ],
                )
                .unwrap()
            })
            .collect();
        let rows = Rows {
            schema: schema.clone(),
            batches,
            map: None,
        };
        store
            .write_rows(&catalog, "links", rows, WriteMode::Overwrite, "run")
            .await
            .unwrap();
        let file = std::fs::read_dir(dir.path().join("links"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "parquet"))
            .unwrap();
        let reader = SerializedFileReader::new(std::fs::File::open(file).unwrap()).unwrap();
        let row_group = reader.get_row_group(0).unwrap();
        // The encodings of a column's data pages (the dictionary page left out).
        let data_pages = |i: usize| -> Vec<Encoding> {
            row_group
                .get_column_page_reader(i)
                .unwrap()
                .map(|p| p.unwrap())
                .filter(|p| p.page_type() != PageType::DICTIONARY_PAGE)
                .map(|p| p.encoding())
                .collect()
        };
        let (account, group) = (data_pages(0), data_pages(1));
        assert!(!account.is_empty());
        assert!(
            account.iter().all(|e| *e == Encoding::RLE_DICTIONARY),
            "the repeated column fell back to plain values: {account:?}"
        );
        assert!(
            group.contains(&Encoding::PLAIN),
            "the other column keeps the 1 MiB default: {group:?}"
        );
        assert_eq!(
            reader.metadata().row_group(0).column(0).compression(),
            Compression::LZ4_RAW
        );
        // The unordered column is written without statistics, the other keeps them.
        let statistics = |i: usize| reader.metadata().row_group(0).column(i).statistics();
        assert!(statistics(0).is_some_and(|s| s.min_bytes_opt().is_some()));
        assert!(statistics(1).is_none(), "{:?}", statistics(1));
    }

    /// A table written whole gets a key index of each column named; a lookup by it finds
    /// the rows a scan of the key column finds (the same rows, in file order), and a store
    /// whose index does not match its file (here: cut short) scans instead.
    #[tokio::test]
    async fn key_indexes_find_the_rows_a_scan_finds() {
        key_indexes_case(false).await;
        // Written in parts (one file per core): an index for each.
        key_indexes_case(true).await;
    }

    async fn key_indexes_case(in_parts: bool) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap();
        let indexed = || [("t".to_string(), vec!["k".to_string()])].into();
        let parallel = || match in_parts {
            true => [("t".to_string(), 1000)].into(),
            false => HashMap::new(),
        };
        let store = Store::open(root)
            .unwrap()
            .with_indexed_columns(indexed())
            .with_parallel_tables(parallel());
        let files = match in_parts {
            true => crate::engine::threads().min(3),
            false => 1,
        };
        let catalog = store.catalog().await.unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
        ]));
        // Runs of a key across batches, a key again further on, NULLs, long and short keys.
        let keys: Vec<Option<String>> = (0..3000)
            .map(|i| match i % 11 {
                0 => None,
                r => Some(format!("key {:04} {}", (i / 3) % 400, "x".repeat(r))),
            })
            .collect();
        let batches: Vec<RecordBatch> = keys
            .chunks(700)
            .enumerate()
            .map(|(c, ks)| {
                let n = (0..ks.len()).map(|i| (c * 700 + i) as i64);
                RecordBatch::try_new(
                    schema.clone(),
                    vec![
                        Arc::new(StringArray::from(ks.to_vec())),
                        Arc::new(Int64Array::from_iter_values(n)),
                    ],
                )
                .unwrap()
            })
            .collect();
        let version = store
            .write_table(
                &catalog,
                "t",
                schema.clone(),
                batches,
                WriteMode::Overwrite,
                "run",
            )
            .await
            .unwrap();
        let index_dir = dir.path().join("_igaflow/keys/t");
        let indexes: Vec<_> = std::fs::read_dir(&index_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(indexes.len(), files, "{indexes:?}");
        assert!(
            indexes
                .iter()
                .all(|i| i.to_string_lossy().ends_with(".parquet.k.idx"))
        );

        // Wanted: some keys present (in runs and apart), one absent, and a NULL.
        let wanted: Vec<Option<String>> = [5usize, 17, 18, 399]
            .iter()
            .flat_map(|&k| (1..11).map(move |r| Some(format!("key {k:04} {}", "x".repeat(r)))))
            .chain([Some("key 9999 x".to_string()), None])
            .collect();
        let expected: Vec<i64> = keys
            .iter()
            .enumerate()
            .filter(|(_, k)| k.is_some() && wanted.contains(k))
            .map(|(i, _)| i as i64)
            .collect();
        assert!(expected.len() > 20);
        async fn found(store: &Store, version: u64, wanted: &[Option<String>]) -> Vec<i64> {
            let ctx = datafusion::prelude::SessionContext::new();
            let keys = ctx
                .read_batch(
                    RecordBatch::try_from_iter(vec![(
                        "k",
                        Arc::new(StringArray::from(wanted.to_vec())) as _,
                    )])
                    .unwrap(),
                )
                .unwrap();
            let schema = Arc::new(Schema::new(vec![
                Field::new("k", DataType::Utf8, true),
                Field::new("n", DataType::Int64, true),
            ]));
            let rows = store
                .rows_of_keys("t", version, keys, &["k"], &schema)
                .await
                .unwrap()
                .expect("files read by position");
            rows.iter()
                .flat_map(|b| b.column(1).as_primitive::<Int64Type>().values().to_vec())
                .collect()
        }
        let used = |store: &Store| {
            let indexes = store.indexes.lock().unwrap();
            indexes.len() == files && indexes.values().all(|i| i.is_some())
        };
        assert_eq!(
            found(&store, version, &wanted).await,
            expected,
            "by the index"
        );
        assert!(used(&store));
        // Another process, whose index of the file is cut short: it scans.
        let bytes = std::fs::read(&indexes[0]).unwrap();
        std::fs::write(&indexes[0], &bytes[..bytes.len() - 16]).unwrap();
        let damaged = Store::open(root)
            .unwrap()
            .with_indexed_columns(indexed())
            .with_parallel_tables(parallel());
        assert_eq!(
            found(&damaged, version, &wanted).await,
            expected,
            "by a scan"
        );
        assert!(!used(&damaged));
    }

    /// Parts cut at batch boundaries, in order, each at least `min` rows, the last never
    /// empty (a batch longer than a part included).
    #[test]
    fn parts_are_cut_in_order_and_the_last_is_never_empty() {
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]));
        let batch = |from: i64, n: i64| {
            let a = Int64Array::from_iter_values(from..from + n);
            RecordBatch::try_new(schema.clone(), vec![Arc::new(a)]).unwrap()
        };
        let cut = |sizes: &[i64], parts: usize, min: usize| {
            let mut at = 0;
            let mut batches: Vec<RecordBatch> = sizes
                .iter()
                .map(|&n| {
                    at += n;
                    batch(at - n, n)
                })
                .collect();
            let before = split_off_parts(&mut batches, parts, min);
            let rows: Vec<usize> = before
                .iter()
                .chain([&batches])
                .map(|p| p.iter().map(RecordBatch::num_rows).sum())
                .collect();
            let values: Vec<i64> = before
                .iter()
                .chain([&batches])
                .flatten()
                .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
                .collect();
            assert_eq!(values, (0..at).collect::<Vec<_>>(), "{sizes:?}: in order");
            rows
        };
        assert_eq!(cut(&[10, 10, 10, 10], 2, 5), [20, 20]);
        assert_eq!(cut(&[10, 10, 10, 10], 4, 5), [10, 10, 10, 10]);
        // Too few rows for two parts of `min`: one.
        assert_eq!(cut(&[10, 10, 10, 10], 2, 30), [40]);
        // One batch longer than a part: it is the last part, after nothing.
        assert_eq!(cut(&[40], 2, 5), [40]);
        assert_eq!(cut(&[5, 40], 3, 5), [45]);
        assert_eq!(cut(&[30, 5, 5], 2, 5), [30, 10]);
    }

    /// A table named parallel is written in parts (one file each, committed as two versions);
    /// read on one partition, its rows come in the order they were written; a table with
    /// fewer rows than two parts is one file.
    #[tokio::test]
    async fn parallel_parts_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap())
            .unwrap()
            .with_parallel_tables([("t".to_string(), 3000)].into());
        let catalog = store.catalog().await.unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]));
        let values: Vec<i64> = (0..20_000).map(|i| (i * 7919) % 20_011).collect();
        let batches = |n: usize| -> Vec<RecordBatch> {
            values[..n]
                .chunks(1000)
                .map(|c| {
                    let a = Int64Array::from(c.to_vec());
                    RecordBatch::try_new(schema.clone(), vec![Arc::new(a)]).unwrap()
                })
                .collect()
        };
        let parts = crate::engine::threads().min(20_000 / 3000);
        let mut catalog = catalog;
        for (table, rows, files) in [("t", 20_000, parts), ("t", 5_000, 1), ("u", 20_000, 1)] {
            let version = store
                .write_table(
                    &catalog,
                    table,
                    schema.clone(),
                    batches(rows),
                    WriteMode::Overwrite,
                    "run",
                )
                .await
                .unwrap();
            catalog.tables.insert(table.to_string(), version);
            let delta = store.delta_at(table, version).await.unwrap();
            let active = super::super::patch::active_files(&store, table, &delta)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(active.len(), files, "{table}: {rows} rows");
            let ctx = crate::engine::context();
            let provider = store
                .provider(&ctx, &catalog, table)
                .await
                .unwrap()
                .unwrap();
            let df = ctx.read_table(provider).unwrap();
            let (_, read) = crate::engine::collect_in_order(&ctx, df).await.unwrap();
            let read: Vec<i64> = read
                .iter()
                .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
                .collect();
            assert_eq!(read, values[..rows], "{table}: {rows} rows in order");
        }
    }
}
