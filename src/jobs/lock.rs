//! The job lock (SPEC section 7): with `concurrent = false` (the default) a second run of the
//! same job exits 4 while the first holds the lock.
//!
//! The lock is a file `_igaflow/locks/<job>.json` in the store, created with put-if-absent (atomic
//! on a local disk and on S3) and holding the run id, host and process id. A lock whose process
//! is gone — a run killed with SIGKILL, a machine that rebooted — is detected (same host: the
//! process no longer exists) and cleared, so the next run proceeds. A lock taken on another
//! host is respected: igaflow cannot see that host's processes.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::store::Store;

#[derive(Debug, Serialize, Deserialize)]
struct Holder {
    run_id: String,
    host: String,
    pid: u32,
    started_at: String,
}

pub struct JobLock<'a> {
    store: &'a Store,
    path: String,
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

fn process_alive(pid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists; no signal is sent.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

impl<'a> JobLock<'a> {
    /// Takes the lock of `job` for `run_id`, clearing a stale one; `Error::Locked` when another
    /// live run holds it.
    pub async fn acquire(store: &'a Store, job: &str, run_id: &str) -> Result<Self> {
        let path = format!("_igaflow/locks/{job}.json");
        let me = Holder {
            run_id: run_id.to_string(),
            host: host(),
            pid: std::process::id(),
            started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        let body = serde_json::to_vec_pretty(&me).expect("invariant: serializes");
        for _ in 0..3 {
            if store.create_file(&path, body.clone()).await? {
                return Ok(Self { store, path });
            }
            let Some(bytes) = store.read_file(&path).await? else {
                continue; // released meanwhile
            };
            let holder: Option<Holder> = serde_json::from_slice(&bytes).ok();
            match holder {
                Some(h) if h.host == me.host && !process_alive(h.pid) => {
                    tracing::warn!(run_id = %h.run_id, pid = h.pid, "clearing the lock of a run that no longer exists");
                    store.delete_file(&path).await?;
                }
                Some(h) => {
                    return Err(Error::Locked(format!(
                        "job `{job}` is running (run {}, process {} on {}, since {}); wait for it to finish, or set concurrent = true on the job",
                        h.run_id, h.pid, h.host, h.started_at
                    )));
                }
                None => {
                    tracing::warn!(path = %path, "clearing an unreadable lock file");
                    store.delete_file(&path).await?;
                }
            }
        }
        Err(Error::Locked(format!(
            "job `{job}`: could not take the lock {path}"
        )))
    }

    pub async fn release(self) -> Result<()> {
        self.store.delete_file(&self.path).await
    }
}
