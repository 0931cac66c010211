//! The `runs` and `task_runs` tables: written at the end of every run, in one catalog commit
//! marked `run_end` (the state `--as-of RUN_ID` reads).

use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};

use super::RunReport;
use crate::config::{Pipeline, timestamp_type};
use crate::error::{Error, Result};
use crate::store::{CatalogChange, Store, WriteMode};

fn ts(values: impl Iterator<Item = i64>) -> TimestampMicrosecondArray {
    TimestampMicrosecondArray::from_iter_values(values).with_timezone("UTC")
}

pub async fn record(
    store: &Store,
    pipeline: &Pipeline,
    mode: &str,
    trigger: &str,
    r: &RunReport,
) -> Result<()> {
    let err = |e: datafusion::arrow::error::ArrowError| Error::store(e.to_string());
    let runs_schema = Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, true),
        Field::new("job", DataType::Utf8, true),
        Field::new("mode", DataType::Utf8, true),
        Field::new("trigger", DataType::Utf8, true),
        Field::new("started_at", timestamp_type(), true),
        Field::new("ended_at", timestamp_type(), true),
        Field::new("status", DataType::Utf8, true),
        Field::new("config_hash", DataType::Utf8, true),
    ]));
    let runs = RecordBatch::try_new(
        runs_schema,
        vec![
            Arc::new(StringArray::from(vec![r.run_id.as_str()])),
            Arc::new(StringArray::from(vec![r.job.as_str()])),
            Arc::new(StringArray::from(vec![mode])),
            Arc::new(StringArray::from(vec![trigger])),
            Arc::new(ts(std::iter::once(r.started_at.timestamp_micros()))),
            Arc::new(ts(std::iter::once(r.ended_at.timestamp_micros()))),
            Arc::new(StringArray::from(vec![r.status.as_str()])),
            Arc::new(StringArray::from(vec![pipeline.config_hash.as_str()])),
        ],
    )
    .map_err(err)?;
    let n = r.tasks.len();
    let task_schema = Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, true),
        Field::new("task", DataType::Utf8, true),
        Field::new("type", DataType::Utf8, true),
        Field::new("status", DataType::Utf8, true),
        Field::new("started_at", timestamp_type(), true),
        Field::new("ended_at", timestamp_type(), true),
        Field::new("rows_read", DataType::Int64, true),
        Field::new("rows_written", DataType::Int64, true),
        Field::new("changes", DataType::Int64, true),
        Field::new("message", DataType::Utf8, true),
    ]));
    let tasks = RecordBatch::try_new(
        task_schema,
        vec![
            Arc::new(StringArray::from(vec![r.run_id.as_str(); n])),
            Arc::new(StringArray::from_iter_values(
                r.tasks.iter().map(|t| t.name.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                r.tasks.iter().map(|t| t.kind.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                r.tasks.iter().map(|t| t.outcome.status.name()),
            )),
            Arc::new(ts(r.tasks.iter().map(|t| t.started_at.timestamp_micros()))),
            Arc::new(ts(r.tasks.iter().map(|t| t.ended_at.timestamp_micros()))),
            Arc::new(Int64Array::from_iter_values(
                r.tasks.iter().map(|t| t.outcome.rows_read as i64),
            )),
            Arc::new(Int64Array::from_iter_values(
                r.tasks.iter().map(|t| t.outcome.rows_written as i64),
            )),
            Arc::new(Int64Array::from_iter_values(
                r.tasks.iter().map(|t| t.outcome.changes as i64),
            )),
            Arc::new(StringArray::from_iter_values(
                r.tasks.iter().map(|t| t.outcome.message.as_str()),
            )),
        ],
    )
    .map_err(err)?;
    // Two runs (of different jobs, in two processes) can end at the same moment: the one whose
    // catalog commit loses appends its records again on top of the other's.
    let mut conflicts = 0;
    loop {
        match append(store, &r.run_id, &runs, &tasks).await {
            Err(Error::Conflict(_)) if conflicts < crate::tasks::CONFLICT_RETRIES => conflicts += 1,
            other => return other,
        }
    }
}

/// Appends one run's `runs` and `task_runs` rows in one catalog commit marked `run_end`.
async fn append(
    store: &Store,
    run_id: &str,
    runs: &RecordBatch,
    tasks: &RecordBatch,
) -> Result<()> {
    let catalog = store.catalog().await?;
    let mut change = CatalogChange {
        run_id: run_id.to_string(),
        what: "run_end".into(),
        ..Default::default()
    };
    let v = store
        .write_table(
            &catalog,
            "runs",
            runs.schema(),
            vec![runs.clone()],
            WriteMode::Append,
            run_id,
        )
        .await?;
    change.tables.insert("runs".into(), v);
    let v = store
        .write_table(
            &catalog,
            "task_runs",
            tasks.schema(),
            vec![tasks.clone()],
            WriteMode::Append,
            run_id,
        )
        .await?;
    change.tables.insert("task_runs".into(), v);
    crate::tasks::pausepoint("commit.run_end").await;
    store.commit(&catalog, change).await?;
    Ok(())
}

/// `igaflow runs`: the latest runs, newest first.
pub async fn list_runs(store: &Store) -> Result<Vec<RecordBatch>> {
    query(store, "select run_id, job, mode, trigger, started_at, ended_at, status from runs order by started_at desc, run_id desc limit 50", None).await
}

/// `igaflow runs RUN_ID`: the run's tasks.
pub async fn show_run(store: &Store, run_id: &str) -> Result<Vec<RecordBatch>> {
    query(
        store,
        "select task, type, status, started_at, ended_at, rows_read, rows_written, changes, message from task_runs where run_id = $1 order by started_at, task",
        Some(run_id),
    )
    .await
}

async fn query(store: &Store, sql: &str, param: Option<&str>) -> Result<Vec<RecordBatch>> {
    let ctx = crate::engine::context();
    let catalog = store.catalog().await?;
    if !store.register(&ctx, &catalog, "runs").await? {
        return Ok(Vec::new());
    }
    store.register(&ctx, &catalog, "task_runs").await?;
    let mut df = ctx.sql(sql).await?;
    if let Some(p) = param {
        df = df.with_param_values(vec![datafusion::common::ScalarValue::from(p)])?;
    }
    Ok(df.collect().await?)
}
