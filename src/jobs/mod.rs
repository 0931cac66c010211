//! Running a job: its tasks in dependency order, their statuses, and the `runs` / `task_runs`
//! tables.
//!
//! Tasks run one after another in an order that respects `depends_on` (the default dependency is
//! the previous task). A failed or blocked task without `continue_on_error` skips everything that
//! depends on it; `run_if = "changed"` skips a task whose dependencies all ended `no_changes` or
//! `skipped`.

mod lock;
mod runs;
mod schedule;

pub use schedule::schedule;

use std::collections::HashMap;
use std::time::Instant;

use chrono::{DateTime, NaiveDate, Utc};

pub use runs::{list_runs, show_run};

use crate::config::{Job, Pipeline};
use crate::error::{Error, Result, exit};
use crate::store::Store;
use crate::tasks::{RunContext, TaskOutcome, TaskStatus, run_task};

pub struct RunOptions {
    pub force: bool,
    pub dry_run: bool,
    pub as_of: Option<NaiveDate>,
    pub trigger: String,
    pub quiet: bool,
}

pub struct TaskReport {
    pub name: String,
    pub kind: String,
    pub outcome: TaskOutcome,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub seconds: f64,
}

pub struct RunReport {
    pub run_id: String,
    pub job: String,
    pub status: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub tasks: Vec<TaskReport>,
    pub exit_code: u8,
}

pub fn new_run_id(at: DateTime<Utc>) -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}", at.format("%Y%m%dT%H%M%S%3fZ"), &suffix[..6])
}

/// `runs.mode`: what kind of synchronization the job does.
fn job_mode(job: &Job) -> &'static str {
    let modes: Vec<_> = job
        .tasks
        .iter()
        .filter(|t| t.kind.ends_with("synchronize") || t.kind == "prepare_synchronization")
        .map(|t| t.mode.name())
        .collect();
    if modes.contains(&"initial") {
        "initial"
    } else if modes.contains(&"incremental") || job.tasks.iter().any(|t| t.dirty) {
        "incremental"
    } else {
        "complete"
    }
}

pub async fn run_job(
    pipeline: &Pipeline,
    store: &Store,
    job_name: &str,
    opts: &RunOptions,
) -> Result<RunReport> {
    let job = pipeline.job(job_name).ok_or_else(|| {
        Error::Usage(format!(
            "job `{job_name}` is not declared in {} (declared: {})",
            pipeline.file.display(),
            pipeline
                .jobs
                .iter()
                .map(|j| j.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    let missing = pipeline.missing_exports(job);
    if !missing.is_empty() {
        return Err(Error::Config {
            file: pipeline.file.clone(),
            problems: missing,
        });
    }
    let started_at = Utc::now();
    let run_id = new_run_id(started_at);
    let rc = RunContext {
        pipeline,
        store,
        run_id: run_id.clone(),
        started_at,
        as_of: opts.as_of.unwrap_or_else(|| started_at.date_naive()),
        force: opts.force,
        dry_run: opts.dry_run,
        overlay: Default::default(),
    };
    tracing::info!(run_id = %run_id, job = %job.name, "run started");

    let lock = if job.concurrent || opts.dry_run {
        None
    } else {
        Some(lock::JobLock::acquire(store, &job.name, &run_id).await?)
    };
    let result = run_tasks(&rc, job, opts, started_at).await;
    let result = match result {
        Ok(report) if !opts.dry_run => {
            crate::tasks::failpoint("run.end");
            runs::record(store, pipeline, job_mode(job), &opts.trigger, &report)
                .await
                .map(|_| report)
        }
        other => other,
    };
    if let Some(lock) = lock {
        lock.release().await?;
    }
    let report = result?;
    tracing::info!(run_id = %report.run_id, status = %report.status, "run ended");
    if !opts.dry_run {
        crate::notify::after_run(pipeline, store, &report).await;
    }
    Ok(report)
}

/// Runs the job's tasks: each starts when its dependencies are done; independent tasks run at
/// the same time.
async fn run_tasks(
    rc: &RunContext<'_>,
    job: &crate::config::Job,
    opts: &RunOptions,
    started_at: chrono::DateTime<Utc>,
) -> Result<RunReport> {
    let mut done: HashMap<String, TaskStatus> = HashMap::new();
    // Dependencies that failed without continue_on_error poison their dependants.
    let mut poisoned: HashMap<String, bool> = HashMap::new();
    let mut reports: Vec<TaskReport> = Vec::new();
    let mut remaining: Vec<&crate::config::Task> = job.tasks.iter().collect();
    let progress = crate::cli::progress::Progress::new(job.tasks.len() as u64, opts.quiet);
    let mut running = futures::stream::FuturesUnordered::new();
    loop {
        // Start every task whose dependencies are done.
        let mut i = 0;
        while i < remaining.len() {
            let task = remaining[i];
            if !task.depends_on.iter().all(|d| done.contains_key(d)) {
                i += 1;
                continue;
            }
            remaining.remove(i);
            let decided = if let Some(d) = task
                .depends_on
                .iter()
                .find(|d| poisoned.get(*d).copied().unwrap_or(false))
            {
                Some(TaskOutcome::skipped(format!(
                    "skipped: dependency `{d}` did not succeed"
                )))
            } else if task.run_if_changed
                && !task.depends_on.is_empty()
                && task
                    .depends_on
                    .iter()
                    .all(|d| matches!(done[d], TaskStatus::NoChanges | TaskStatus::Skipped))
            {
                Some(TaskOutcome::skipped(
                    "skipped: no dependency changed anything (run_if = \"changed\")",
                ))
            } else {
                None
            };
            progress.start(&task.name);
            running.push(async move {
                let t0 = Instant::now();
                let task_started = Utc::now();
                let outcome = match decided {
                    Some(o) => o,
                    None => match run_task(rc, task).await {
                        Ok(o) => o,
                        Err(e) => {
                            tracing::error!(task = %task.name, error = %e, "task failed");
                            TaskOutcome::from_error(&e)
                        }
                    },
                };
                (task, outcome, task_started, t0.elapsed().as_secs_f64())
            });
        }
        let Some((task, outcome, task_started, seconds)) =
            futures::StreamExt::next(&mut running).await
        else {
            break;
        };
        crate::engine::release_free_memory();
        let bad = matches!(outcome.status, TaskStatus::Failed | TaskStatus::Blocked);
        let skipped_for_failure = outcome.status == TaskStatus::Skipped
            && outcome.message.starts_with("skipped: dependency");
        poisoned.insert(
            task.name.clone(),
            (bad && !task.continue_on_error) || skipped_for_failure,
        );
        done.insert(task.name.clone(), outcome.status);
        tracing::info!(task = %task.name, status = outcome.status.name(), changes = outcome.changes, detail = %outcome.message, "task ended");
        progress.finish_task(
            &task.name,
            outcome.status.name(),
            outcome.rows_read + outcome.rows_written,
        );
        reports.push(TaskReport {
            name: task.name.clone(),
            kind: task.kind.clone(),
            outcome,
            started_at: task_started,
            ended_at: Utc::now(),
            seconds,
        });
    }
    // The report lists tasks in the job's order.
    reports.sort_by_key(|r| job.tasks.iter().position(|t| t.name == r.name));
    progress.clear();

    let failing: Vec<&TaskReport> = reports
        .iter()
        .filter(|r| matches!(r.outcome.status, TaskStatus::Failed | TaskStatus::Blocked))
        .filter(|r| {
            !job.tasks
                .iter()
                .any(|t| t.name == r.name && t.continue_on_error)
        })
        .collect();
    // A blocked task holds back changes a person has to confirm (`--force`): the job exits 3
    // even when `continue_on_error` let the tasks after it run, so a scheduler never reads a
    // blocked connector as a success.
    let blocked = reports
        .iter()
        .any(|r| r.outcome.status == TaskStatus::Blocked);
    let exit_code = if failing
        .iter()
        .any(|r| r.outcome.exit_code == exit::INVALID_INPUT)
    {
        exit::INVALID_INPUT
    } else if blocked {
        exit::BLOCKED
    } else if !failing.is_empty() {
        exit::TASK_FAILED
    } else {
        exit::OK
    };
    let status = if failing
        .iter()
        .any(|r| r.outcome.status == TaskStatus::Failed)
    {
        "failed"
    } else if blocked {
        "blocked"
    } else if reports.iter().any(|r| {
        matches!(
            r.outcome.status,
            TaskStatus::Warning | TaskStatus::Failed | TaskStatus::Blocked
        )
    }) {
        "warning"
    } else if reports.iter().all(|r| {
        matches!(
            r.outcome.status,
            TaskStatus::NoChanges | TaskStatus::Skipped
        )
    }) {
        "no_changes"
    } else {
        "succeeded"
    };
    Ok(RunReport {
        run_id: rc.run_id.clone(),
        job: job.name.clone(),
        status: status.to_string(),
        started_at,
        ended_at: Utc::now(),
        tasks: reports,
        exit_code,
    })
}
