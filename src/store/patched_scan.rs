//! Reads of a table version that patches left with deletion vectors.
//!
//! delta-rs applies a deletion vector by reading every row of the file with its position and
//! filtering the positions afterwards, and with it gives up the predicate pushdown of the
//! Parquet scan: a filtered read of a patched table decodes the whole table (at 1M identities,
//! each of the dozen filtered reads of `correlation_keys` in a dirty role model decoded 5.3M
//! rows instead of the 2M of its resource type and side). Here the deletion vector becomes a
//! Parquet row selection of the kept rows, handed to DataFusion's own Parquet scan, which
//! intersects it with its row-group, page and filter pruning.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::stats::Precision;
use datafusion::common::{DFSchema, Statistics};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use sha2::Digest;

use super::Store;
use super::patch::{ActiveFile, active_files, selection};
use crate::error::Result;

/// A Delta table version with deletion vectors, scanned file by file with the kept rows as a
/// Parquet row selection.
#[derive(Debug)]
pub(super) struct PatchedTable {
    schema: SchemaRef,
    url: ObjectStoreUrl,
    files: Vec<PartitionedFile>,
    rows: u64,
    bytes: u64,
}

impl Store {
    /// A provider of `table` (table `name`) applying its deletion vectors, with `schema` (the
    /// one delta-rs gives it); `None` when no file has a deletion vector or one that igaflow
    /// does not read (see [`active_files`]).
    pub(super) async fn patched_table(
        &self,
        ctx: &SessionContext,
        name: &str,
        table: &deltalake::DeltaTable,
        schema: SchemaRef,
    ) -> Result<Option<PatchedTable>> {
        let Some(active) = active_files(self, name, table).await? else {
            return Ok(None);
        };
        if active.iter().all(|a| a.file.deleted.is_empty()) {
            return Ok(None);
        }
        // The store's object store, under a URL of its own in this session.
        let id = hex::encode(&sha2::Sha256::digest(self.root.as_str().as_bytes())[..8]);
        let url = ObjectStoreUrl::parse(format!("igaflow-store://{id}/"))?;
        ctx.register_object_store(url.as_ref(), self.objects.clone());
        let (mut rows, mut bytes) = (0, 0);
        let files = active
            .into_iter()
            .map(|ActiveFile { file, records, .. }| {
                rows += records - file.deleted.len();
                bytes += file.size;
                let mut f = PartitionedFile::new(file.path.to_string(), file.size);
                if !file.deleted.is_empty() {
                    f = f.with_extension(
                        datafusion::datasource::physical_plan::parquet::ParquetRowSelection::new(
                            selection(&file.deleted, records, false),
                        ),
                    );
                }
                f
            })
            .collect();
        Ok(Some(PatchedTable {
            schema,
            url,
            files,
            rows,
            bytes,
        }))
    }
}

#[async_trait]
impl TableProvider for PatchedTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        // Pruned by statistics and filtered while decoding where the settings allow; the
        // filter above the scan stays.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        // The session's Parquet settings as they are now (delta-rs reads them the same way).
        let options = datafusion::config::TableParquetOptions {
            global: state.config().options().execution.parquet.clone(),
            ..Default::default()
        };
        let mut source =
            ParquetSource::new(self.schema.clone()).with_table_parquet_options(options);
        if let Some(predicate) = conjunction(filters.iter().cloned()) {
            let df_schema = DFSchema::try_from(self.schema.as_ref().clone())?;
            source = source.with_predicate(state.create_physical_expr(predicate, &df_schema)?);
        }
        let statistics = Statistics::new_unknown(&self.schema)
            .with_num_rows(Precision::Inexact(self.rows as usize))
            .with_total_byte_size(Precision::Inexact(self.bytes as usize));
        // One group: the planner splits the files into byte ranges for its partitions (each
        // range keeps its file's row selection).
        let config = FileScanConfigBuilder::new(self.url.clone(), Arc::new(source))
            .with_file_group(FileGroup::new(self.files.clone()))
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .with_statistics(statistics)
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}
