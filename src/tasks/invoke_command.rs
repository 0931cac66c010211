//! `invoke_command`: runs an external program (an export script, a fulfillment connector).
//!
//! The program runs with its arguments (no shell), the task's `env` added to igaflow's, and
//! IGAFLOW_RUN_ID / IGAFLOW_STORE / IGAFLOW_PIPELINE set. Exit code 0 succeeds; any other code
//! fails the task with the tail of its stderr in the message. After `timeout` (default 10
//! minutes) the program and everything it started (its process group) are killed and the task
//! fails, so no child outlives the run.

use std::os::unix::process::CommandExt;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::{RunContext, TaskOutcome, TaskStatus};
use crate::config::{Task, parse_duration};
use crate::error::{Error, Result};

const STDERR_TAIL: usize = 2000;

pub async fn run(rc: &RunContext<'_>, task: &Task) -> Result<TaskOutcome> {
    let (program, args) = task
        .command
        .split_first()
        .expect("invariant: validated non-empty");
    let timeout = task
        .timeout
        .as_deref()
        .and_then(parse_duration)
        .unwrap_or(Duration::from_secs(600));
    if rc.dry_run {
        return Ok(TaskOutcome {
            status: TaskStatus::Skipped,
            message: format!("dry run: would run {}", task.command.join(" ")),
            ..TaskOutcome::skipped("")
        });
    }
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .current_dir(&rc.pipeline.dir)
        .envs(&task.env)
        .env("IGAFLOW_RUN_ID", &rc.run_id)
        .env("IGAFLOW_PIPELINE", &rc.pipeline.dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        // Its own process group, so a timeout kills the program and its children.
        .process_group(0);
    let mut child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::TaskFailed(format!("cannot start `{program}`: {e}")))?;
    let pid = child.id();
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let reader = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf).await;
        buf
    });
    let waited = tokio::time::timeout(timeout, child.wait()).await;
    let status = match waited {
        Ok(status) => status.map_err(|e| Error::TaskFailed(format!("`{program}`: {e}")))?,
        Err(_) => {
            if let Some(pid) = pid {
                // SAFETY: signalling a process group we created; no memory is involved.
                unsafe {
                    libc::killpg(pid as libc::pid_t, libc::SIGKILL);
                }
            }
            let _ = child.wait().await;
            let tail = tail(&reader.await.unwrap_or_default());
            return Err(Error::TaskFailed(format!(
                "`{}` did not finish within {:?} and was killed{}",
                task.command.join(" "),
                timeout,
                if tail.is_empty() {
                    String::new()
                } else {
                    format!("; stderr: {tail}")
                }
            )));
        }
    };
    let tail = tail(&reader.await.unwrap_or_default());
    if !status.success() {
        return Err(Error::TaskFailed(format!(
            "`{}` exited with {}{}",
            task.command.join(" "),
            status
                .code()
                .map_or_else(|| "a signal".to_string(), |c| format!("code {c}")),
            if tail.is_empty() {
                String::new()
            } else {
                format!("; stderr: {tail}")
            }
        )));
    }
    Ok(TaskOutcome {
        status: TaskStatus::Succeeded,
        rows_read: 0,
        rows_written: 0,
        changes: 1,
        message: format!("`{}` succeeded", task.command.join(" ")),
        exit_code: 0,
    })
}

/// The last characters of a program's stderr, on one line.
fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    let start = text
        .char_indices()
        .rev()
        .nth(STDERR_TAIL)
        .map(|(i, _)| i)
        .unwrap_or(0);
    text[start..]
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}
