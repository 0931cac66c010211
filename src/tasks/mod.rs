//! Task types. Each module is one task type of SPEC sections 4–9; the job engine calls
//! [`run_task`] with the run's context and gets back an outcome it records in `task_runs`.

pub mod anonymize;
pub mod classification;
pub mod correlation_keys;
mod diagnose;
pub mod dirty;
pub mod expressions;
pub mod frames;
pub mod identities;
pub mod invoke_command;
pub mod invoke_sql;
pub mod orders;
pub mod pre_existing;
pub mod prepare_synchronization;
pub mod role_model;
pub mod synchronize;

use chrono::{DateTime, NaiveDate, Utc};

use crate::config::{Pipeline, Task};
use crate::error::{Error, Result, exit};
use crate::store::Store;

/// Final status of a task (SPEC section 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    Succeeded,
    NoChanges,
    Warning,
    Failed,
    Blocked,
    Skipped,
}

impl TaskStatus {
    pub fn name(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::NoChanges => "no_changes",
            Self::Warning => "warning",
            Self::Failed => "failed",
            Self::Blocked => "blocked",
            Self::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone)]
pub struct TaskOutcome {
    pub status: TaskStatus,
    pub rows_read: u64,
    pub rows_written: u64,
    pub changes: u64,
    pub message: String,
    /// The exit code this outcome asks of the process (0 when it asks nothing).
    pub exit_code: u8,
}

impl TaskOutcome {
    pub fn skipped(message: impl Into<String>) -> Self {
        Self {
            status: TaskStatus::Skipped,
            rows_read: 0,
            rows_written: 0,
            changes: 0,
            message: message.into(),
            exit_code: exit::OK,
        }
    }

    pub fn from_error(e: &Error) -> Self {
        Self {
            status: TaskStatus::Failed,
            rows_read: 0,
            rows_written: 0,
            changes: 0,
            message: e.to_string(),
            exit_code: e.exit_code(),
        }
    }
}

/// The first five of `items`, comma-separated, then `, …` when there are more: lists in task
/// messages stay short.
pub(crate) fn first_few<T: std::fmt::Display>(items: &[T]) -> String {
    let shown: Vec<String> = items.iter().take(5).map(T::to_string).collect();
    format!(
        "{}{}",
        shown.join(", "),
        if items.len() > 5 { ", …" } else { "" }
    )
}

/// What every task of one run shares.
pub struct RunContext<'a> {
    pub pipeline: &'a Pipeline,
    pub store: &'a Store,
    pub run_id: String,
    pub started_at: DateTime<Utc>,
    pub as_of: NaiveDate,
    pub force: bool,
    pub dry_run: bool,
    /// On a dry run, the tables earlier tasks would have committed, kept in memory so later
    /// tasks of the run see them; never written.
    pub overlay: std::sync::Mutex<std::collections::BTreeMap<String, frames::NewTable>>,
}

impl RunContext<'_> {
    /// Keeps a dry run's table in memory for the run's later tasks.
    pub fn stage_dry_run(&self, table: frames::NewTable) {
        self.overlay
            .lock()
            .expect("overlay lock")
            .insert(table.name.clone(), table);
    }
}

/// Runs a task. A task that runs out of the memory limit in an operator that cannot spill
/// (a hash join's build side) runs once more with spill-friendly plans (sort-merge joins):
/// slower, but bounded. Tasks commit only when they finish, so the second attempt starts from
/// the same state. The next task tries hash joins again: a plan of sort-merge joins holds each
/// finished sort's rows for its merge without spilling them, so a task whose hash joins fit
/// (orders, run in pieces) can fail with sort-merge joins.
///
/// A task whose commit conflicts with another process's ([`Error::Conflict`]: another job on
/// the same store committed a table the task replaces) runs again on the new state, up to
/// [`CONFLICT_RETRIES`] times; its first attempt committed nothing.
pub async fn run_task(rc: &RunContext<'_>, task: &Task) -> Result<TaskOutcome> {
    let result = again_on_conflict(task, || attempt(rc, task)).await;
    explained(rc, task, result).await
}

/// Runs `step` (one commit of `task`) again while its commit conflicts with another run's, up
/// to [`CONFLICT_RETRIES`] times. A step that commits once is safe to run again: its failed
/// attempt committed nothing.
pub(crate) async fn again_on_conflict<F, Fut>(task: &Task, mut step: F) -> Result<TaskOutcome>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<TaskOutcome>>,
{
    let mut conflicts = 0;
    loop {
        match step().await {
            Err(Error::Conflict(message)) if conflicts < CONFLICT_RETRIES => {
                conflicts += 1;
                tracing::warn!(
                    task = %task.name,
                    error = %message,
                    "another run committed the tables this task writes; running it again on the new state"
                );
            }
            other => return other,
        }
    }
}

/// A task that failed in the query engine because a configuration expression fails on a value
/// gets that expression's error instead: its line, the row and the value (see [`diagnose`]).
async fn explained(
    rc: &RunContext<'_>,
    task: &Task,
    result: Result<TaskOutcome>,
) -> Result<TaskOutcome> {
    match result {
        Err(e @ (Error::Engine(_) | Error::Delta(_))) if !is_out_of_memory(&e) => {
            match diagnose::failing_expression(rc, task).await {
                Ok(Some(config)) => Err(config),
                _ => Err(e),
            }
        }
        other => other,
    }
}

/// How many times a task runs again after its commit conflicted with another process's.
pub const CONFLICT_RETRIES: usize = 3;

async fn attempt(rc: &RunContext<'_>, task: &Task) -> Result<TaskOutcome> {
    match dispatch(rc, task).await {
        Err(e) if is_out_of_memory(&e) && !crate::engine::spill_friendly() => {
            tracing::warn!(
                task = %task.name,
                error = %e,
                "the task exceeded the memory limit with in-memory hash joins; running it again with joins that spill to disk"
            );
            crate::engine::set_spill_friendly(true);
            let retried = dispatch(rc, task).await;
            crate::engine::set_spill_friendly(false);
            retried
        }
        other => other,
    }
}

fn is_out_of_memory(e: &Error) -> bool {
    e.to_string().contains("Resources exhausted")
}

async fn dispatch(rc: &RunContext<'_>, task: &Task) -> Result<TaskOutcome> {
    match task.kind.as_str() {
        "prepare_synchronization" => prepare_synchronization::run(rc, task).await,
        "synchronize" => synchronize::run(rc, task).await,
        "compute_correlation_keys" => correlation_keys::run(rc, task).await,
        "compute_role_model" => role_model::run(rc, task).await,
        "update_classification" => classification::run(rc, task).await,
        "generate_provisioning_orders" => orders::run(rc, task).await,
        "save_pre_existing_access_rights" => pre_existing::run(rc, task).await,
        "update_entity_property_expressions" => expressions::run(rc, task).await,
        "invoke_command" => invoke_command::run(rc, task).await,
        "invoke_sql" => invoke_sql::run(rc, task).await,
        "set_recently_modified_flag" => dirty::run(rc, task).await,
        "update_identities" => identities::run(rc, task).await,
        other => Err(Error::TaskFailed(format!(
            "task type `{other}` is not available in this release of igaflow"
        ))),
    }
}

/// Waits at this point when the environment names it (`IGAFLOW_PAUSE`): creates
/// `<IGAFLOW_PAUSE_DIR>/reached` and returns once `<IGAFLOW_PAUSE_DIR>/go` exists.
///
/// Concurrency tests hold a run here while another process commits to the same store.
pub async fn pausepoint(name: &str) {
    let (Ok(wanted), Ok(dir)) = (
        std::env::var("IGAFLOW_PAUSE"),
        std::env::var("IGAFLOW_PAUSE_DIR"),
    ) else {
        return;
    };
    if wanted != name {
        return;
    }
    let dir = std::path::Path::new(&dir);
    if std::fs::write(dir.join("reached"), name).is_err() {
        return;
    }
    while !dir.join("go").exists() {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Kills the process when the environment names this failpoint (`IGAFLOW_FAILPOINT`).
///
/// Crash-safety tests set it to stop a run with SIGKILL at an exact step of a commit: no
/// destructor, no flush, as when an operator or the OOM killer ends a process.
pub fn failpoint(name: &str) {
    if let Ok(wanted) = std::env::var("IGAFLOW_FAILPOINT")
        && wanted == name
    {
        // SAFETY: raising a signal on the current process has no memory-safety preconditions.
        unsafe {
            libc::raise(libc::SIGKILL);
        }
    }
}

/// The time a task spends in each of its phases, logged at debug level
/// (`IGAFLOW_LOG=igaflow=debug`): where a benchmark's seconds go, without a profiler.
pub struct Phases {
    task: &'static str,
    at: std::time::Instant,
}

impl Phases {
    pub fn new(task: &'static str) -> Self {
        Self {
            task,
            at: std::time::Instant::now(),
        }
    }

    /// Ends the current phase, named `phase`, and starts the next.
    pub fn done(&mut self, phase: &str) {
        let seconds = self.at.elapsed().as_secs_f64();
        tracing::debug!(
            task = self.task,
            phase,
            seconds = format!("{seconds:.3}"),
            "phase"
        );
        self.at = std::time::Instant::now();
    }
}
