//! Criterion micro-benchmarks of the hot paths (issue 6): CSV load, synchronization diff,
//! correlation, role model, order generation — each one task of the generated company's
//! pipeline on a store prepared up to that task.
//!
//!   cargo bench --bench hot_paths            (IGAFLOW_BENCH_IDENTITIES, default 20000)
//!
//! Each iteration starts from a copy of the prepared store, so it measures the same work.

use std::path::{Path, PathBuf};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use igaflow::config::{ColumnType, CsvOptions, Pipeline};
use igaflow::input::csv::{CsvSpec, read};
use igaflow::jobs::{RunOptions, run_job};
use igaflow::store::Store;

/// Single-task jobs appended to the generated pipeline.
const JOBS: &str = r#"
[[job]]
name = "b_sync_hr"
[[job.task]]
name = "sync_hr"
type = "synchronize"
connector = "hr"

[[job]]
name = "b_sync_targets"
[[job.task]]
name = "sync_ad"
type = "synchronize"
connector = "ad"
[[job.task]]
name = "sync_erp"
type = "synchronize"
connector = "erp"
depends_on = []

[[job]]
name = "b_keys"
[[job.task]]
name = "correlation_keys"
type = "compute_correlation_keys"

[[job]]
name = "b_role_model"
[[job.task]]
name = "role_model"
type = "compute_role_model"

[[job]]
name = "b_classification"
[[job.task]]
name = "classification"
type = "update_classification"

[[job]]
name = "b_orders"
[[job.task]]
name = "orders"
type = "generate_provisioning_orders"
"#;

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    pipeline: Pipeline,
    /// The same pipeline reading the day-2 HR export.
    day2: Pipeline,
    runtime: tokio::runtime::Runtime,
}

impl Fixture {
    fn new() -> Self {
        let n = std::env::var("IGAFLOW_BENCH_IDENTITIES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000);
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().to_path_buf();
        igaflow::generate::generate(n, 7, &root).expect("generate");
        let file = root.join("pipeline/pipeline.toml");
        let text = std::fs::read_to_string(&file).expect("pipeline") + JOBS;
        std::fs::write(&file, text).expect("pipeline");
        let pipeline = Pipeline::load(&root.join("pipeline")).expect("valid pipeline");
        // SAFETY: set before any other thread of this process reads the environment.
        unsafe { std::env::set_var("GEN_DAY", "day2") };
        let day2 = Pipeline::load(&root.join("pipeline")).expect("valid pipeline");
        unsafe { std::env::remove_var("GEN_DAY") };
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        Self {
            _dir: dir,
            root,
            pipeline,
            day2,
            runtime,
        }
    }

    /// Runs `job` on the store at `store`.
    fn run(&self, store: &Path, job: &str) {
        self.run_with(&self.pipeline, store, job)
    }

    fn run_with(&self, pipeline: &Pipeline, store: &Path, job: &str) {
        let store = Store::open(&store.to_string_lossy()).expect("store");
        let opts = RunOptions {
            force: true,
            dry_run: false,
            as_of: chrono::NaiveDate::from_ymd_opt(2026, 11, 25),
            trigger: "bench".into(),
            quiet: true,
        };
        let report = self
            .runtime
            .block_on(run_job(pipeline, &store, job, &opts))
            .expect("job runs");
        assert_eq!(report.exit_code, 0, "{job}");
    }

    /// A store prepared by `jobs`, kept for the copies.
    fn prepared(&self, name: &str, jobs: &[&str]) -> PathBuf {
        let store = self.root.join(name);
        for j in jobs {
            self.run(&store, j);
        }
        store
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("dir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).expect("copy");
        }
    }
}

fn hot_paths(c: &mut Criterion) {
    let f = Fixture::new();
    let mut g = c.benchmark_group("hot_paths");
    g.sample_size(10);

    let persons = f.root.join("day1/hr/persons.csv");
    let columns: Vec<(String, ColumnType)> = f
        .pipeline
        .entity("person")
        .expect("person")
        .columns
        .iter()
        .map(|c| (c.name.clone(), c.ty))
        .collect();
    let options = CsvOptions::default();
    g.bench_function("csv_load_persons", |b| {
        b.iter(|| {
            let spec = CsvSpec {
                file: persons.clone(),
                columns: columns.clone(),
                key: Some("employee_id".into()),
                command_column: None,
                split: Vec::new(),
                dictionary: false,
                options: options.clone(),
            };
            read(&spec).expect("loads")
        })
    });

    // Each stage from a store prepared up to it; the iteration runs on a fresh copy.
    let empty = f.root.join("empty");
    let synced = f.prepared("synced", &["b_sync_hr", "b_sync_targets"]);
    let keyed = f.root.join("keyed");
    copy_dir(&synced, &keyed);
    f.run(&keyed, "b_keys");
    let modeled = f.root.join("modeled");
    copy_dir(&keyed, &modeled);
    f.run(&modeled, "b_role_model");
    f.run(&modeled, "b_classification");
    let stages: [(&str, &Path, &str, &Pipeline); 6] = [
        (
            "synchronize_hr_first_load",
            &empty,
            "b_sync_hr",
            &f.pipeline,
        ),
        (
            "synchronize_hr_unchanged_diff",
            &synced,
            "b_sync_hr",
            &f.pipeline,
        ),
        ("synchronize_hr_day2_diff", &synced, "b_sync_hr", &f.day2),
        ("correlation_keys", &synced, "b_keys", &f.pipeline),
        (
            "role_model_with_correlation",
            &keyed,
            "b_role_model",
            &f.pipeline,
        ),
        ("orders", &modeled, "b_orders", &f.pipeline),
    ];
    let work = f.root.join("work");
    for (name, from, job, pipeline) in stages {
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let _ = std::fs::remove_dir_all(&work);
                    if from.exists() {
                        copy_dir(from, &work);
                    }
                },
                |_| f.run_with(pipeline, &work, job),
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, hot_paths);
criterion_main!(benches);
