//! `invoke_sql`: runs a SQL file over the store and writes the result to a file (CSV by
//! default, or Parquet), e.g. to feed another connector's exports from igaflow's tables.
//!
//! The file is written next to its final name and renamed into place, so a reader never sees
//! half of it.

use super::frames::session;
use super::{RunContext, TaskOutcome, TaskStatus};
use crate::cli::output::{self, Format};
use crate::config::Task;
use crate::error::{Error, Result};

pub async fn run(rc: &RunContext<'_>, task: &Task) -> Result<TaskOutcome> {
    let sql_path = task.sql.as_ref().expect("invariant: validated");
    let out_path = task.output.as_ref().expect("invariant: validated");
    let sql = std::fs::read_to_string(sql_path).map_err(|e| Error::Input {
        file: sql_path.clone(),
        message: format!("cannot read the SQL file: {e}"),
    })?;
    let (ctx, _) = session(rc).await?;
    let df = ctx.sql(&sql).await.map_err(|e| Error::Input {
        file: sql_path.clone(),
        message: format!("the query does not plan: {}", e.strip_backtrace()),
    })?;
    let schema = std::sync::Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    if rc.dry_run {
        return Ok(TaskOutcome {
            status: TaskStatus::Succeeded,
            rows_read: rows as u64,
            rows_written: 0,
            changes: 0,
            message: format!("dry run: {rows} row(s), {} not written", out_path.display()),
            exit_code: 0,
        });
    }
    let format = match task.format.as_deref() {
        Some("parquet") => Format::Parquet,
        _ => Format::Csv,
    };
    if let Some(dir) = out_path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            context: format!("creating {}", dir.display()),
            source,
        })?;
    }
    let tmp = out_path.with_file_name(format!(
        ".{}.tmp",
        out_path
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    output::write(&batches, schema, format, Some(&tmp))?;
    std::fs::rename(&tmp, out_path).map_err(|source| Error::Io {
        context: format!("writing {}", out_path.display()),
        source,
    })?;
    Ok(TaskOutcome {
        status: TaskStatus::Succeeded,
        rows_read: rows as u64,
        rows_written: rows as u64,
        changes: rows as u64,
        message: format!("{rows} row(s) written to {}", out_path.display()),
        exit_code: 0,
    })
}
