//! Query results out: a table for people, CSV / JSON / Parquet for programs.

use std::io::Write;
use std::path::Path;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::util::pretty::pretty_format_batches;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
    Parquet,
}

pub fn write(
    batches: &[RecordBatch],
    schema: SchemaRef,
    format: Format,
    output: Option<&Path>,
) -> Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    let arrow = |e: datafusion::arrow::error::ArrowError| Error::Engine(e.into());
    match format {
        Format::Table => {
            let text = if batches.is_empty() {
                pretty_format_batches(&[RecordBatch::new_empty(schema)]).map_err(arrow)?
            } else {
                pretty_format_batches(batches).map_err(arrow)?
            };
            writeln!(buf, "{text}").expect("writing to memory");
        }
        Format::Csv => {
            let mut w = datafusion::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .with_date_format("%Y-%m-%d".into())
                .with_timestamp_tz_format("%Y-%m-%dT%H:%M:%S%.6fZ".into())
                .build(&mut buf);
            if batches.is_empty() {
                w.write(&RecordBatch::new_empty(schema)).map_err(arrow)?;
            }
            for b in batches {
                w.write(b).map_err(arrow)?;
            }
        }
        Format::Json => {
            // Every row has every column: a NULL is `null`, not a missing key.
            let mut w = datafusion::arrow::json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, datafusion::arrow::json::writer::JsonArray>(&mut buf);
            let refs: Vec<&RecordBatch> = batches.iter().collect();
            w.write_batches(&refs).map_err(arrow)?;
            w.finish().map_err(arrow)?;
            if buf.is_empty() {
                buf.extend_from_slice(b"[]");
            }
            buf.push(b'\n');
        }
        Format::Parquet => {
            let mut w = datafusion::parquet::arrow::ArrowWriter::try_new(&mut buf, schema, None)
                .map_err(|e| Error::Engine(e.into()))?;
            for b in batches {
                w.write(b).map_err(|e| Error::Engine(e.into()))?;
            }
            w.close().map_err(|e| Error::Engine(e.into()))?;
        }
    }
    match output {
        Some(path) => std::fs::write(path, &buf)
            .map_err(|e| Error::io(format!("cannot write {}", path.display()), e)),
        None => {
            let mut out = std::io::stdout().lock();
            match out.write_all(&buf).and_then(|_| out.flush()) {
                // The reader stopped early (`| head`): what it read is what it wanted.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                other => other.map_err(|e| Error::io("cannot write to standard output", e)),
            }
        }
    }
}
