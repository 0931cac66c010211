//! `igaflow schedule PIPELINE`: runs each job at its cron schedule (UTC) or interval.
//!
//! One loop sleeps until the next due job and runs it; a job is therefore never run twice at
//! once by one scheduler, and the job lock keeps other processes out. A failed run is logged
//! and the schedule goes on. SIGTERM or SIGINT stops the loop: while sleeping at once, during a
//! run after that run ends (a second signal abandons it: the store stays as the last commit
//! left it, by design). Exit code 0.

use std::io::Write as _;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::signal::unix::{SignalKind, signal};

use super::{RunOptions, run_job};
use crate::config::{Job, Pipeline, parse_duration};
use crate::error::{Error, Result, exit};
use crate::store::Store;

enum Trigger {
    Cron(Box<croner::Cron>),
    Every(Duration),
}

impl Trigger {
    fn of(job: &Job) -> Result<Option<Self>> {
        if let Some(s) = &job.schedule {
            let cron = croner::Cron::from_str(s)
                .map_err(|e| Error::Usage(format!("job `{}`: schedule \"{s}\": {e}", job.name)))?;
            return Ok(Some(Self::Cron(Box::new(cron))));
        }
        Ok(job
            .interval
            .as_deref()
            .and_then(parse_duration)
            .map(Self::Every))
    }

    /// The next time after `after`.
    fn next(&self, after: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Self::Cron(c) => c
                .find_next_occurrence(&after, false)
                .unwrap_or(after + chrono::Duration::days(365)),
            Self::Every(d) => {
                after + chrono::Duration::from_std(*d).unwrap_or(chrono::Duration::seconds(60))
            }
        }
    }
}

pub async fn schedule(pipeline: &Pipeline, store: &Store, quiet: bool) -> Result<u8> {
    let mut jobs: Vec<(&Job, Trigger, DateTime<Utc>)> = Vec::new();
    let now = Utc::now();
    for job in &pipeline.jobs {
        if let Some(t) = Trigger::of(job)? {
            // Interval jobs run at start, cron jobs at their next time.
            let first = match t {
                Trigger::Every(_) => now,
                Trigger::Cron(_) => t.next(now),
            };
            tracing::info!(job = %job.name, next = %first, "scheduled");
            jobs.push((job, t, first));
        }
    }
    if jobs.is_empty() {
        return Err(Error::Usage(format!(
            "no job of {} has `schedule` or `interval`",
            pipeline.file.display()
        )));
    }
    let mut term = signal(SignalKind::terminate()).map_err(|e| Error::Io {
        context: "installing the SIGTERM handler".into(),
        source: e,
    })?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| Error::Io {
        context: "installing the SIGINT handler".into(),
        source: e,
    })?;
    loop {
        let (i, due) = jobs
            .iter()
            .enumerate()
            .map(|(i, j)| (i, j.2))
            .min_by_key(|(_, d)| *d)
            .expect("at least one job");
        let wait = (due - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
        let job = jobs[i].0;
        let opts = RunOptions {
            force: false,
            dry_run: false,
            as_of: None,
            trigger: "schedule".into(),
            quiet: true,
        };
        let run = run_job(pipeline, store, &job.name, &opts);
        tokio::pin!(run);
        let mut stopping = false;
        let result = loop {
            tokio::select! {
                r = &mut run => break Some(r),
                _ = term.recv() => if stopping { break None } else { stopping = true },
                _ = int.recv() => if stopping { break None } else { stopping = true },
            }
            tracing::info!(job = %job.name, "stop requested: finishing the running job (signal again to abandon it)");
        };
        match result {
            None => {
                tracing::warn!(job = %job.name, "running job abandoned; the store keeps its last committed state");
                break;
            }
            Some(Ok(report)) => {
                tracing::info!(job = %job.name, run_id = %report.run_id, status = %report.status, "scheduled run ended");
                if !quiet {
                    // A closed standard output must not stop the scheduler.
                    let _ = writeln!(
                        std::io::stdout(),
                        "{} run {} · job {} · {}",
                        Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        report.run_id,
                        job.name,
                        report.status
                    );
                }
            }
            Some(Err(e)) => tracing::error!(job = %job.name, error = %e, "scheduled run failed"),
        }
        // Idle until the next run: the memory the run freed goes back to the system.
        crate::engine::hand_back_free_memory();
        let next = jobs[i]
            .1
            .next(due.max(Utc::now() - chrono::Duration::milliseconds(1)));
        jobs[i].2 = if next <= Utc::now() {
            jobs[i].1.next(Utc::now())
        } else {
            next
        };
        if stopping {
            break;
        }
    }
    tracing::info!("scheduler stopped");
    Ok(exit::OK)
}
