//! Writing one table's next Delta version (step 1 of a store commit, see the module above).

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;

use super::{Catalog, Store};
use crate::error::{Error, Result};

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
        let schema = nullable(&schema);
        let mut batches: Vec<RecordBatch> = batches
            .into_iter()
            .filter(|b| b.num_rows() > 0)
            .map(|b| crate::engine::cast_batch(&b, &schema))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::store(format!("table {name}: {e}")))?;
        let committed = catalog.tables.get(name).copied();
        let latest = self.delta_latest(name).await?;
        let mut mode = mode;
        if mode == WriteMode::Append && latest.version() != committed {
            // Uncommitted versions from a killed run sit on top: rebuild from the committed state.
            if let Some(v) = committed {
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
            batches.push(RecordBatch::new_empty(schema.clone()));
        }
        let props = CommitProperties::default().with_metadata([(
            "igaflow_run_id".to_string(),
            serde_json::Value::from(run_id),
        )]);
        let save = match mode {
            WriteMode::Overwrite => SaveMode::Overwrite,
            WriteMode::Append => SaveMode::Append,
        };
        let mut builder = latest
            .write(batches)
            .with_save_mode(save)
            .with_commit_properties(props);
        if mode == WriteMode::Overwrite {
            builder = builder.with_schema_mode(SchemaMode::Overwrite);
        }
        let table = builder.await?;
        table
            .version()
            .ok_or_else(|| Error::store(format!("table {name}: Delta write returned no version")))
    }
}

/// Delta tables here are all-nullable: a NOT NULL flag that DataFusion infers for one run's
/// data must not make the next run's append fail. View types (which a Parquet scan may
/// produce) are stored as their plain forms, so a table keeps one schema.
pub(crate) fn nullable(schema: &SchemaRef) -> SchemaRef {
    use datafusion::arrow::datatypes::DataType;
    Arc::new(Schema::new(
        schema
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
