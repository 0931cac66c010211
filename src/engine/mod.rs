//! The one place that builds DataFusion sessions, plus small Arrow helpers every task shares.

mod as_of;
pub mod expr;
mod row_values;

use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, new_null_array};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::prelude::{SessionConfig, SessionContext};

pub use row_values::row_values_udf;

/// A session with igaflow's settings and functions.
///
/// Strings stay `Utf8` (not `Utf8View`) so that tables read back from Parquet have the same
/// types as freshly loaded CSV data, and all timestamps are interpreted in UTC.
pub fn context() -> SessionContext {
    let mut config = SessionConfig::new()
        .with_information_schema(true)
        .with_default_catalog_and_schema("datafusion", "public");
    let opts = config.options_mut();
    opts.execution.parquet.schema_force_view_types = false;
    opts.sql_parser.map_string_types_to_utf8view = false;
    opts.execution.time_zone = Some("+00:00".to_string());
    let ctx = SessionContext::new_with_config(config);
    ctx.register_udf(row_values_udf());
    ctx
}

/// A session whose `current_date` is `as_of` (the run's `--as-of` date).
pub fn context_at(as_of: chrono::NaiveDate) -> SessionContext {
    let ctx = context();
    ctx.register_udf(as_of::current_date_udf(as_of));
    ctx
}

/// Casts a batch to `schema` by column name; columns missing from the batch become NULL.
pub fn cast_batch(
    batch: &RecordBatch,
    schema: &SchemaRef,
) -> datafusion::error::Result<RecordBatch> {
    let opts = CastOptions {
        safe: false,
        ..Default::default()
    };
    let columns = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
            Some(c) => cast_with_options(c, f.data_type(), &opts).map_err(DataFusionError::from),
            None => Ok(new_null_array(f.data_type(), batch.num_rows())),
        })
        .collect::<datafusion::error::Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// Batches as one `MemTable` source for a session. The schema is made all-nullable and every
/// batch is aligned to it (plans may infer NOT NULL or carry metadata a batch lacks).
pub fn mem_table(
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
) -> datafusion::error::Result<Arc<datafusion::datasource::MemTable>> {
    let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| {
                f.as_ref()
                    .clone()
                    .with_nullable(true)
                    .with_metadata(Default::default())
            })
            .collect::<Vec<_>>(),
    ));
    let batches = batches
        .iter()
        .map(|b| {
            if b.schema() == schema {
                Ok(b.clone())
            } else {
                Ok(RecordBatch::try_new(schema.clone(), b.columns().to_vec())
                    .or_else(|_| cast_batch(b, &schema))?)
            }
        })
        .collect::<datafusion::error::Result<Vec<_>>>()?;
    Ok(Arc::new(datafusion::datasource::MemTable::try_new(
        schema,
        vec![batches],
    )?))
}
