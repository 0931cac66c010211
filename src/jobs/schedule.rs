//! `igaflow schedule PIPELINE`: runs each job at its cron schedule (UTC) or interval.
//!
//! Each job has a loop of its own that sleeps until the job is due and runs it, so a long run
//! of one job does not delay the others (a nightly complete job does not hold back a frequent
//! incremental one), while a job is never run twice at once by one scheduler; the job lock
//! keeps other processes out. A run that is due while the same job still runs starts when that
//! run ends. A failed run is logged and the schedule goes on. SIGTERM or SIGINT stops the
//! loops: sleeping ones at once, running ones after their run ends (a second signal abandons
//! those runs: the store stays as the last commits left it, by design). Exit code 0.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

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

pub async fn schedule(pipeline: &Pipeline, store: Arc<Store>, quiet: bool) -> Result<u8> {
    let mut jobs: Vec<(String, Trigger, DateTime<Utc>)> = Vec::new();
    let now = Utc::now();
    for job in &pipeline.jobs {
        if let Some(t) = Trigger::of(job)? {
            // Interval jobs run at start, cron jobs at their next time.
            let first = match t {
                Trigger::Every(_) => now,
                Trigger::Cron(_) => t.next(now),
            };
            tracing::info!(job = %job.name, next = %first, "scheduled");
            jobs.push((job.name.clone(), t, first));
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
    let pipeline = Arc::new(pipeline.clone());
    let (stop, stopped) = watch::channel(false);
    let mut loops = tokio::task::JoinSet::new();
    for (name, trigger, first) in jobs {
        let job = JobLoop {
            pipeline: Arc::clone(&pipeline),
            store: Arc::clone(&store),
            name,
            trigger,
            quiet,
        };
        loops.spawn(job.run(first, stopped.clone()));
    }
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let _ = stop.send(true);
    tracing::info!("stop requested: finishing the running jobs (signal again to abandon them)");
    tokio::select! {
        _ = async { while loops.join_next().await.is_some() {} } => {}
        _ = term.recv() => abandon(&mut loops),
        _ = int.recv() => abandon(&mut loops),
    }
    tracing::info!("scheduler stopped");
    Ok(exit::OK)
}

fn abandon(loops: &mut tokio::task::JoinSet<()>) {
    tracing::warn!("running jobs abandoned; the store keeps its last committed state");
    loops.abort_all();
}

/// One job's schedule: sleep until due, run, repeat until stopped.
struct JobLoop {
    pipeline: Arc<Pipeline>,
    store: Arc<Store>,
    name: String,
    trigger: Trigger,
    quiet: bool,
}

impl JobLoop {
    async fn run(self, first: DateTime<Utc>, mut stopped: watch::Receiver<bool>) {
        let mut due = first;
        while !*stopped.borrow() {
            let wait = (due - Utc::now()).to_std().unwrap_or_default();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stopped.changed() => return,
            }
            let opts = RunOptions {
                force: false,
                dry_run: false,
                as_of: None,
                trigger: "schedule".into(),
                quiet: true,
            };
            let job = self.name.as_str();
            match run_job(&self.pipeline, &self.store, job, &opts).await {
                Ok(report) => {
                    tracing::info!(job, run_id = %report.run_id, status = %report.status, "scheduled run ended");
                    if !self.quiet {
                        println!(
                            "{} run {} · job {job} · {}",
                            Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                            report.run_id,
                            report.status
                        );
                    }
                }
                Err(e) => tracing::error!(job, error = %e, "scheduled run failed"),
            }
            let next = self
                .trigger
                .next(due.max(Utc::now() - chrono::Duration::milliseconds(1)));
            due = if next <= Utc::now() {
                self.trigger.next(Utc::now())
            } else {
                next
            };
        }
    }
}
