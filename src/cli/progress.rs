//! Progress on a terminal: one line that says which task runs, how many are done and how many
//! rows the finished ones read and wrote.
//! Silent with `--quiet`, when stderr is not a terminal, or when logs go out as JSON.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    rows: std::sync::atomic::AtomicU64,
}

impl Progress {
    pub fn new(total: u64, quiet: bool) -> Self {
        let show = !quiet
            && std::io::stderr().is_terminal()
            && std::env::var_os("IGAFLOW_LOG_JSON").is_none();
        let bar = show.then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{pos}/{len}] {msg} ({elapsed})")
                    .expect("invariant: static template"),
            );
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            bar
        });
        Self {
            bar,
            rows: Default::default(),
        }
    }

    pub fn start(&self, task: &str) {
        if let Some(b) = &self.bar {
            let rows = self.rows.load(std::sync::atomic::Ordering::Relaxed);
            b.set_message(format!("running {task} · {rows} rows processed"));
        }
    }

    pub fn finish_task(&self, task: &str, status: &str, rows: u64) {
        let total = self
            .rows
            .fetch_add(rows, std::sync::atomic::Ordering::Relaxed)
            + rows;
        if let Some(b) = &self.bar {
            b.inc(1);
            b.println(format!("  {task}: {status} ({rows} rows)"));
            b.set_message(format!("{total} rows processed"));
        }
    }

    pub fn clear(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
